"""Plugin registry: every swappable component is found through ``importlib.metadata`` entry points.

Built-ins are registered in ifadit's own ``pyproject.toml`` under the same ``ifadit.<group>`` entry-point
groups a third-party distribution uses, so there is exactly one road into the registry. Entry points are
loaded lazily, one at a time, so a plugin that fails to import is reported and never takes the others down.

ifadit's own names are lower case with hyphens (``arcface-irse50``), like the weights manifest's names.
Lookups compare names in that form, so the underscore spelling (``arcface_irse50``, the older style) finds
the same component, and so does a plugin's name in either spelling.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GROUPS: tuple[str, ...] = (
    "flows",
    "key_schemes",
    "identity_encoders",
    "attribute_encoders",
    "generators",
    "discriminators",
    "recognizers",
    "mappers",
)
ENTRY_POINT_PREFIX = "ifadit."


class RegistryError(LookupError):
    """An unknown group or name, or a plugin that could not be loaded."""


@dataclass(frozen=True)
class PluginInfo:
    group: str
    name: str
    value: str  # "module:attr" as written in the entry point
    distribution: str


@dataclass(frozen=True)
class BrokenPlugin:
    info: PluginInfo
    error: str  # "ExceptionType: message"

    def describe(self) -> str:
        return (
            f"plugin {self.info.name!r} in group {self.info.group!r} from distribution "
            f"{self.info.distribution!r} ({self.info.value}) failed to load: {self.error}"
        )


_loaded: dict[tuple[str, str], Any] = {}
_broken: dict[tuple[str, str], BrokenPlugin] = {}
_all_loaded: list[tuple[str, str, Any]] | None = None


def canonical_name(name: str) -> str:
    """The form names are compared in: lower case, hyphens (``ArcFace_IRSE50`` -> ``arcface-irse50``)."""
    return name.strip().lower().replace("_", "-")


def find_name(names: Iterable[str], name: str) -> str | None:
    """The registered name among ``names`` that ``name`` spells (exactly, else in canonical form)."""
    names = list(names)
    if name in names:
        return name
    wanted = canonical_name(name)
    return next((n for n in names if canonical_name(n) == wanted), None)


class Names(dict):
    """Registered names of a group; looking one up accepts the other spelling (``_`` for ``-``) too."""

    def __missing__(self, key: object) -> Any:
        found = find_name(self, key) if isinstance(key, str) else None
        if found is None:
            raise KeyError(key)
        return self[found]

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (isinstance(key, str) and find_name(self, key) is not None)


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise RegistryError(f"unknown plugin group {group!r}; groups are: {', '.join(GROUPS)}")


def _entry_points(group: str) -> dict[str, tuple[metadata.EntryPoint, PluginInfo]]:
    found: dict[str, tuple[metadata.EntryPoint, PluginInfo]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_PREFIX + group):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        name = ep.name
        info = PluginInfo(group=group, name=name, value=ep.value, distribution=dist)
        if name in found and found[name][1].distribution != dist:
            # Two distributions claim one name: ifadit's own built-in keeps it, the clash is reported.
            other = found[name][1]
            keep, drop = (other, info) if other.distribution == "ifadit" else (info, other)
            _broken[(group, name)] = BrokenPlugin(
                drop, f"NameClash: {name!r} is also registered by {keep.distribution!r}, which is used"
            )
            if keep is other:
                continue
        found[name] = (ep, info)
    return found


def available(group: str) -> Names:
    """Registered names of a group (without importing them)."""
    _check_group(group)
    return Names({name: info for name, (_, info) in sorted(_entry_points(group).items())})


def get(group: str, name: str) -> Any:
    """The object registered under ``name`` in ``group``, imported on first use."""
    _check_group(group)
    key = (group, name)
    if key in _loaded:
        return _loaded[key]
    entries = _entry_points(group)
    name = find_name(entries, name) or name
    key = (group, name)
    if key in _loaded:
        return _loaded[key]
    if name not in entries:
        names = ", ".join(sorted(entries)) or "(none)"
        raise RegistryError(f"no {group} component named {name!r}; available: {names}")
    ep, info = entries[name]
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not take the registry down
        broken = BrokenPlugin(info, f"{type(exc).__name__}: {exc}")
        _broken[key] = broken
        raise RegistryError(broken.describe()) from exc
    _loaded[key] = obj
    _broken.pop(key, None)
    return obj


def create(group: str, name: str, /, **kwargs: Any) -> Any:
    """Instantiate the component registered under ``name`` with keyword arguments."""
    return get(group, name)(**kwargs)


def load_all(group: str) -> tuple[dict[str, Any], list[BrokenPlugin]]:
    """Import every plugin of a group; return the loaded ones and a report of those that failed."""
    loaded: dict[str, Any] = {}
    for name in available(group):
        with contextlib.suppress(RegistryError):  # get() records the failure in _broken
            loaded[name] = get(group, name)
    broken = [b for (g, _), b in sorted(_broken.items()) if g == group]
    return loaded, broken


def loaded_components() -> list[tuple[str, str, Any]]:
    """``(group, name, object)`` of every plugin of every group that imports, imported once per process
    (until :func:`clear_cache`)."""
    global _all_loaded
    if _all_loaded is None:
        _all_loaded = [(g, n, obj) for g in GROUPS for n, obj in load_all(g)[0].items()]
    return _all_loaded


def subclass_choices(base: type | tuple[type, ...]) -> dict[str, list[type]]:
    """Registered names (any group) whose class is a subclass of ``base``, with the classes they name: the
    names a typed argument accepts (one name may stand for several classes of different groups)."""
    bases = tuple(c for c in (base if isinstance(base, tuple) else (base,)) if inspect.isclass(c))
    choices: dict[str, list[type]] = {}
    for _group, name, obj in loaded_components() if bases else []:
        if inspect.isclass(obj) and issubclass(obj, bases) and obj not in choices.get(name, []):
            choices.setdefault(name, []).append(obj)
    return choices


def name_of(group: str, cls: type) -> str | None:
    """The registered short name of a class, if it is registered in ``group``."""
    target = f"{cls.__module__}:{cls.__qualname__}"
    for name, info in available(group).items():
        if info.value.replace(" ", "") == target:
            return name
    return None


def class_path(group: str, name: str) -> str:
    """The dotted import path (``module.Class``) of a registered name, as jsonargparse expects it."""
    _check_group(group)
    entries = _entry_points(group)
    name = find_name(entries, name) or name
    if name not in entries:
        names = ", ".join(sorted(entries)) or "(none)"
        raise RegistryError(f"no {group} component named {name!r}; available: {names}")
    module, _, attr = entries[name][1].value.partition(":")
    return f"{module.strip()}.{attr.strip()}" if attr else module.strip()


def expand_short_names(config: Any, group_for_key: Mapping[str, str] | None = None) -> Any:
    """Rewrite ``class_path: <short name>`` in a (YAML-loaded) config to full import paths.

    The group is taken from the parent key through ``group_for_key`` (e.g. ``{"flow": "flows"}``); without a
    mapping entry a short name is looked up in every group and must be unique. Full dotted paths pass through.
    """
    group_for_key = dict(group_for_key or {})

    def resolve(value: str, parent: str | None) -> str:
        if "." in value:
            return value
        if parent is not None and parent in group_for_key:
            return class_path(group_for_key[parent], value)
        hits = [g for g in GROUPS if value in available(g)]
        if len(hits) == 1:
            return class_path(hits[0], value)
        if len(hits) > 1:
            raise RegistryError(f"short name {value!r} is ambiguous: registered in groups {hits}")
        return value  # not ours: leave it for jsonargparse to resolve or reject

    def walk(node: Any, parent: str | None) -> Any:
        if isinstance(node, Mapping):
            out = {}
            for key, value in node.items():
                if key == "class_path" and isinstance(value, str):
                    out[key] = resolve(value, parent)
                else:
                    out[key] = walk(value, key)
            return out
        if isinstance(node, list):
            return [walk(item, parent) for item in node]
        return node

    return walk(config, None)


def instantiate(group: str, spec: Any) -> Any:
    """Build a component from a short name, a ``{"class_path"|"name": ..., "init_args": {...}}`` mapping
    or an already-built object (returned as is)."""
    if isinstance(spec, str):
        return create(group, spec)
    if isinstance(spec, Mapping):
        target = spec.get("class_path", spec.get("name"))
        if not isinstance(target, str):
            raise RegistryError(f"a {group} spec needs 'class_path' or 'name'; got keys {sorted(spec)}")
        init_args = dict(spec.get("init_args", {}) or {})
        if "." in target:
            import importlib

            module, _, attr = target.rpartition(".")
            return getattr(importlib.import_module(module), attr)(**init_args)
        return create(group, target, **init_args)
    return spec


def clear_cache() -> None:
    """Forget imported plugins (used by tests that install or break plugins at run time)."""
    global _all_loaded
    _all_loaded = None
    _loaded.clear()
    _broken.clear()
