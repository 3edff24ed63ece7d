"""Sweep overrides: dotted keys, merged into a recipe, and component switches by class name.

Overrides are mappings whose keys may be dotted (``model.losses.anonymity: 0``). They are merged into the
recipe: mappings merge key by key, anything else replaces. A component (``model.flow``, ``model.key_scheme``,
...) can be switched by naming another class (``model.flow: realnvp`` or ``{class_path: realnvp, init_args:
{...}}``): the recipe's ``init_args`` that the new class accepts (``dim``, ``cond_dim``, ``num_blocks``) are
kept, the others dropped, and the given ones merged on top — so a flow or key-scheme axis needs one word per
value. ``null`` removes a component (``model.compensator: null``).
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import yaml

from ifadit import registry
from ifadit.lightning_cli import COMPONENT_GROUPS


class SweepSpecError(ValueError):
    """A sweep spec that cannot be read, or one whose combinations cannot be built."""


def expand_dotted(overrides: Mapping[Any, Any]) -> dict[Any, Any]:
    """``{"a.b": 1, "a": {"c": 2}}`` -> ``{"a": {"b": 1, "c": 2}}``, at every level."""
    out: dict[Any, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            value = expand_dotted(value)
        parts = key.split(".") if isinstance(key, str) and "." in key else [key]
        nested: Any = value
        for part in reversed(parts[1:]):
            nested = {part: nested}
        head = parts[0]
        if isinstance(nested, dict) and isinstance(out.get(head), dict):
            out[head] = plain_merge(out[head], nested)
        else:
            out[head] = nested
    return out


def plain_merge(base: dict[Any, Any], override: Mapping[Any, Any]) -> dict[Any, Any]:
    """``override`` merged into a copy of ``base``: mappings key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = plain_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _import_class(group: str, name: str) -> type | None:
    try:
        if "." not in name:
            return registry.get(group, name)
        module, _, attr = name.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    except Exception:  # unknown or broken: jsonargparse reports it with its own message when the child parses
        return None


def _accepted_arguments(cls: type | None) -> set[str] | None:
    """The keyword arguments ``cls(...)`` takes; None when it takes any (``**kwargs``) or is unknown."""
    if cls is None:
        return None
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL,) and p.name != "self"}


def _dotted(group: str, name: str) -> str:
    if "." in name:
        return name
    try:
        return registry.class_path(group, name)
    except registry.RegistryError:
        return name


def merge_component(base: Any, override: Any, group: str) -> Any:
    """A component override on top of a recipe's component (see the module docstring)."""
    if override is None:
        return None
    if isinstance(override, str):
        override = {"class_path": override}
    if not isinstance(override, Mapping):
        raise SweepSpecError(f"a {group} override must be a class name, a mapping or null, got {override!r}")
    if isinstance(base, str):
        base = {"class_path": base}
    if not isinstance(base, Mapping):
        if "class_path" not in override:
            raise SweepSpecError(f"the recipe has no {group} component to change: give its class_path")
        return copy.deepcopy(dict(override))
    new_class = override.get("class_path")
    old_class = base.get("class_path")
    if new_class is None or old_class is None or _dotted(group, new_class) == _dotted(group, old_class):
        return plain_merge(dict(base), override)
    accepted = _accepted_arguments(_import_class(group, new_class))
    kept = {k: copy.deepcopy(v) for k, v in (base.get("init_args") or {}).items()
            if accepted is None or k in accepted}
    out = {k: copy.deepcopy(v) for k, v in override.items() if k != "init_args"}
    out["init_args"] = plain_merge(kept, override.get("init_args") or {})
    return out


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[Any, Any]) -> dict[str, Any]:
    """A copy of ``config`` with ``overrides`` merged in (dotted keys, component switches)."""
    out = copy.deepcopy(dict(config))
    for key, value in expand_dotted(overrides).items():
        if key == "model" and isinstance(value, Mapping):
            model = out.get("model")
            model = dict(model) if isinstance(model, Mapping) else {}
            for name, item in value.items():
                if name in COMPONENT_GROUPS:
                    model[name] = merge_component(model.get(name), item, COMPONENT_GROUPS[name])
                elif isinstance(item, Mapping) and isinstance(model.get(name), dict):
                    model[name] = plain_merge(model[name], item)
                else:
                    model[name] = copy.deepcopy(item)
            out["model"] = model
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = plain_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(overrides: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested overrides as ``a.b.c`` keys (for display and MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and "class_path" not in value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_set_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``; the value is read as YAML (``3``, ``null``, ``[1, 2]``, ``realnvp``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SweepSpecError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise SweepSpecError(f"--set {key}: not a YAML value: {str(exc).splitlines()[0]}") from None
