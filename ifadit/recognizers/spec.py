"""Recognizers named on a command line: ``NAME``, ``NAME:key=value,...`` or ``CKPT[:key=value,...]``.

``synthfaces64-judge`` (the judge shipped with ifadit), ``dlib``,
``arcface_irse50:checkpoint=/w/model_ir_se50.pth``, and
``outputs/checkpoints/ifadit/foundations-judge/last.ckpt:config=recipes/foundations/judge.yaml`` (a
checkpoint ifadit trained: the ``synthfaces`` recognizer, built from the recipe it was trained with).
Values are read as YAML scalars (``threshold=0.4`` is a float).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ifadit import registry
from ifadit.recognizers.base import Recognizer

_ARGS = re.compile(r"^(?P<head>.+?):(?P<args>[A-Za-z_]\w*=.*)$")
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def parse_recognizer_spec(spec: str) -> tuple[str, dict[str, object]]:
    """``(name or checkpoint path, keyword arguments)``."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty recognizer spec")
    match = _ARGS.match(spec)
    head, kwargs = (match["head"], match["args"]) if match else (spec, "")
    parsed: dict[str, object] = {}
    for item in filter(None, kwargs.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"recognizer spec {spec!r}: expected key=value, got {item!r}")
        parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return head, parsed


def replace_recognizer_argument(spec: str, key: str, value: str) -> str:
    """``spec`` with the value of its existing ``key=`` argument replaced (the rest kept as written)."""
    match = _ARGS.match(spec.strip())
    if match is None:
        raise ValueError(f"recognizer spec {spec!r} has no arguments")
    items = [f"{key}={value}" if item.partition("=")[0].strip() == key else item
             for item in match["args"].split(",")]
    return f"{match['head']}:{','.join(items)}"


def is_checkpoint_path(head: str) -> bool:
    return head.endswith(".ckpt") or Path(head).is_file()


def recognizer_label(spec: str) -> str:
    """A short name for reports and metric names: the registered name, or the checkpoint's run folder."""
    head, _ = parse_recognizer_spec(spec)
    if not is_checkpoint_path(head):
        return _LABEL_CHARS.sub("_", head)
    path = Path(head)
    generic = path.stem == "last" or path.stem.startswith(("best", "epoch="))
    return _LABEL_CHARS.sub("_", path.parent.name if generic and path.parent.name else path.stem)


def build_recognizer(spec: str) -> Recognizer:
    """The recognizer a spec names (see the module doc)."""
    head, kwargs = parse_recognizer_spec(spec)
    if head in registry.available("recognizers"):
        recognizer = registry.create("recognizers", head, **kwargs)
    elif is_checkpoint_path(head):
        if "config" not in kwargs and "identity_encoder" not in kwargs:
            raise ValueError(
                f"recognizer checkpoint {head} needs the recipe it was trained with: "
                f"'{head}:config=RECIPE.yaml'"
            )
        recognizer = registry.create("recognizers", "synthfaces", checkpoint=head, **kwargs)
    else:
        names = ", ".join(registry.available("recognizers")) or "(none)"
        raise registry.RegistryError(
            f"no recognizers component named {head!r} and no such checkpoint file; available: {names}"
        )
    if not isinstance(recognizer, Recognizer):
        raise ValueError(f"recognizer {head!r} is a {type(recognizer).__name__}, not an ifadit Recognizer")
    return recognizer
