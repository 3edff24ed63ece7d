"""Plugin registry: every swappable component is found through ``importlib.metadata`` entry points.

Built-ins are registered in ifadit's own ``pyproject.toml`` under the same ``ifadit.<group>`` entry-point
groups a third-party distribution uses, so there is exactly one road into the registry. Entry points are
loaded lazily, one at a time, so a plugin that fails to import is reported and never takes the others down.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
from collections.abc import Mapping
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


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise RegistryError(f"unknown plugin group {group!r}; groups are: {', '.join(GROUPS)}")


def _entry_points(group: str) -> dict[str, tuple[metadata.EntryPoint, PluginInfo]]:
    found: dict[str, tuple[metadata.EntryPoint, PluginInfo]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_PREFIX + group):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        info = PluginInfo(group=group, name=ep.name, value=ep.value, distribution=dist)
        if ep.name in found and found[ep.name][1].distribution != dist:
            # Two distributions claim one name: ifadit's own built-in keeps it, the clash is reported.
            other = found[ep.name][1]
            keep, drop = (other, info) if other.distribution == "ifadit" else (info, other)
            _broken[(group, ep.name)] = BrokenPlugin(
                drop, f"NameClash: {ep.name!r} is also registered by {keep.distribution!r}, which is used"
            )
            if keep is other:
                continue
        found[ep.name] = (ep, info)
    return found


def available(group: str) -> dict[str, PluginInfo]:
    """Registered names of a group (without importing them)."""
    _check_group(group)
    return {name: info for name, (_, info) in sorted(_entry_points(group).items())}


def get(group: str, name: str) -> Any:
    """The object registered under ``name`` in ``group``, imported on first use."""
    _check_group(group)
    key = (group, name)
    if key in _loaded:
        return _loaded[key]
    entries = _entry_points(group)
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
    _loaded.clear()
    _broken.clear()
