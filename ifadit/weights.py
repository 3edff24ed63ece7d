"""Pretrained-checkpoint manifest, resolver and by-name loading.

Nothing here downloads: a checkpoint is an explicit path from a recipe, a file in the weights folder
(``$IFADIT_WEIGHTS``, default ``~/.cache/ifadit/weights``), or a weight file shipped inside the package
(the SynthFaces foundations, listed in :data:`SHIPPED_MANIFEST` with their sha256, which is always checked).
A missing file gives one error that says what it is, where it was looked for, where to obtain it and the
sha256 expected; a file whose tensors do not match the module gives the first mismatching key and both
shapes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn


class WeightsError(RuntimeError):
    """A pretrained checkpoint is missing, corrupt or does not fit the module it is loaded into."""


@dataclass(frozen=True)
class WeightSpec:
    """One entry of the manifest."""

    name: str
    filename: str
    layout: str  # which public container layout the file uses
    source: str  # where a user obtains it (we never fetch it)
    sha256: str | None = None  # None where the publisher gives none
    description: str = ""
    shipped: bool = False  # the file ships inside the package (SHIPPED_DIR), not in the weights folder


MANIFEST: dict[str, WeightSpec] = {}

# The foundations: safetensors files shipped in the package, listed with their sha256 in manifest.json beside
# them (written by ``python -m ifadit.foundations export``).
SHIPPED_DIR = Path(__file__).resolve().parent / "foundations"
SHIPPED_MANIFEST = SHIPPED_DIR / "manifest.json"


def register_weights(spec: WeightSpec) -> WeightSpec:
    MANIFEST[spec.name] = spec
    return spec


def register_shipped(manifest: str | os.PathLike[str] = SHIPPED_MANIFEST) -> list[WeightSpec]:
    """Register every entry of a shipped-weights manifest (``{name: {filename, sha256, description}}``)."""
    path = Path(manifest)
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
        return [
            register_weights(
                WeightSpec(
                    name=name,
                    filename=entry["filename"],
                    layout="safetensors",
                    source=f"shipped with ifadit ({entry.get('recipe', 'recipes/foundations')})",
                    sha256=entry["sha256"],
                    description=entry.get("description", ""),
                    shipped=True,
                )
            )
            for name, entry in entries.items()
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{path}: not a valid weights manifest ({type(exc).__name__}: {exc})") from exc


def weights_dir() -> Path:
    env = os.environ.get("IFADIT_WEIGHTS")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ifadit" / "weights"


def sha256_of(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve(name: str, path: str | os.PathLike[str] | None = None, verify: bool = False) -> Path:
    """Where the checkpoint ``name`` lives: the explicit ``path`` if given, else the weights folder."""
    spec = MANIFEST.get(name)
    if path is not None:
        candidate = Path(path).expanduser()
        looked = [candidate]
    else:
        if spec is None:
            known = ", ".join(sorted(MANIFEST)) or "(none)"
            raise WeightsError(f"unknown checkpoint {name!r} and no path given; known: {known}")
        candidate = (SHIPPED_DIR if spec.shipped else weights_dir()) / spec.filename
        looked = [candidate]
        verify = verify or spec.shipped
    if not candidate.is_file():
        where = " or ".join(str(p) for p in looked)
        hint = ""
        if spec is not None and spec.shipped:
            hint = f"; it ships with ifadit: restore it from the repository (git checkout -- {candidate})"
        elif spec is not None:
            sha = spec.sha256 or "not published"
            hint = (
                f"; put {spec.filename!r} ({spec.description or spec.layout}) into {weights_dir()} "
                f"(set IFADIT_WEIGHTS to change it) or give its path; obtain it from {spec.source}; "
                f"expected sha256 {sha}"
            )
        raise WeightsError(f"checkpoint {name!r} not found at {where}{hint}")
    if verify and spec is not None and spec.sha256 is not None:
        actual = sha256_of(candidate)
        if actual != spec.sha256:
            raise WeightsError(
                f"checkpoint {name!r} at {candidate} has sha256 {actual}, expected {spec.sha256}"
            )
    return candidate


def load_checkpoint(path: str | os.PathLike[str], weights_only: bool = True, mmap: bool = False) -> Any:
    """``torch.load`` on the CPU; ``weights_only=True`` unless a layout needs pickled objects. ``mmap``:
    tensors stay on disk until touched (for reading a checkpoint's metadata without its weights).
    A ``.safetensors`` file is read as its flat dict of tensors."""
    try:
        if Path(path).suffix == ".safetensors":
            return safetensors.torch.load_file(Path(path), device="cpu")
        return torch.load(Path(path), map_location="cpu", weights_only=weights_only, mmap=mmap)
    except FileNotFoundError as exc:
        raise WeightsError(f"checkpoint file not found: {path}") from exc
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise WeightsError(f"cannot read checkpoint {path}: {type(exc).__name__}: {first_line}") from exc


def load_component_checkpoint(module: nn.Module, checkpoint: str | os.PathLike[str]) -> None:
    """A manifest name or a path of a state dict this component class saved (a bare dict, one under
    ``state_dict``, or DataParallel's ``module.`` keys), loaded strictly; half-precision files are cast to
    the module's dtype."""
    name = str(checkpoint)
    path = resolve(name) if name in MANIFEST else resolve(name, path=checkpoint)
    state = load_checkpoint(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if state and all(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    load_state_dict_by_name(module, state, what=str(path))


def strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under ``prefix`` with the prefix removed (e.g. ``encoder.`` of a pSp checkpoint)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_state_dict_by_name(
    module: nn.Module, state_dict: Mapping[str, Any], what: str = "checkpoint", strict: bool = True
) -> None:
    """Load by key name, failing with the first missing/unexpected key or the first shape mismatch."""
    own = module.state_dict()
    for key, value in state_dict.items():
        if key in own and hasattr(value, "shape") and tuple(own[key].shape) != tuple(value.shape):
            raise WeightsError(
                f"{what}: tensor {key!r} has shape {tuple(value.shape)} in the file but "
                f"{tuple(own[key].shape)} in the {type(module).__name__}"
            )
    if strict:
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if missing:
            raise WeightsError(
                f"{what}: key {missing[0]!r} (shape {tuple(own[missing[0]].shape)}) is missing from the file "
                f"({len(missing)} missing in all) — is it the right layout for {type(module).__name__}?"
            )
        if unexpected:
            raise WeightsError(
                f"{what}: unexpected key {unexpected[0]!r} in the file ({len(unexpected)} unexpected in all) "
                f"— is it the right layout for {type(module).__name__}?"
            )
    module.load_state_dict(dict(state_dict), strict=strict)


register_shipped()
