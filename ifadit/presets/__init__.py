"""Model presets: a complete anonymizer named by its weights (``ifadit anonymize --model NAME``).

A preset is one YAML file in this package (``ifadit/presets/<name>.yaml``); adding a model is adding a file::

    name: ifadit-ffhq256-official       # must equal the file name
    description: one line for 'ifadit models'
    resolution: 256                      # the aligned face size
    model: {...}                         # an IFADITTask ``model`` section, exactly as in a recipe
    weights:                             # files loaded into built components, by component (dotted) path
      mapper: ifadit-mapper              # a manifest name (its layout from the manifest) ...
      flow: {file: flows/x.safetensors, layout: safetensors, prefix: model.flow.}   # ... or a path

Inside ``model``, a component's ``checkpoint`` / ``backbone_checkpoint`` init argument names its pretrained
file the same way. Manifest names are looked up in the weights folder (``$IFADIT_WEIGHTS``); relative paths
are relative to the preset's own folder, so a preset can ship its files next to it. Name every file
explicitly (no ``checkpoint: null`` meaning "the default file"): the files a preset needs are read off it
without building anything, for ``ifadit models`` and ``ifadit weights``.

Building a preset lives in :mod:`ifadit.model_files`; this module only reads and checks the YAML.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ifadit.registry import canonical_name
from ifadit.weights import MANIFEST, SHIPPED_DIR, WeightsError, WeightSpec, weights_dir

PRESET_DIR = Path(__file__).resolve().parent
PRESET_SUFFIXES = (".yaml", ".yml")
#: init arguments of a component that name a pretrained file
WEIGHT_ARGS = ("checkpoint", "backbone_checkpoint")
#: how a file of the ``weights`` section is read (``ifadit.model_files.load_weight_file``)
LAYOUTS = ("ifadit-official", "safetensors", "state-dict")
_TOP_KEYS = {"name", "description", "resolution", "model", "weights", "notes"}


class PresetError(ValueError):
    """A preset that does not exist or does not parse; the message is one line."""


@dataclass(frozen=True)
class WeightFile:
    """One file of a preset's ``weights`` section: which component it fills and how it is read."""

    component: str  # attribute path inside the IFADIT model (``flow``, ``attribute_encoder.encoder``)
    file: str  # a manifest name or a path
    layout: str | None = None  # None: the manifest entry's, else from the suffix
    prefix: str = ""  # take only the keys under this prefix (prefix removed)
    match: str = "name"  # 'position' reproduces the official positional loading (ifadit-official only)


@dataclass(frozen=True)
class FileNeed:
    """A file a preset needs, and where it is (or would be) found."""

    reference: str  # as written in the preset
    spec: WeightSpec | None  # the manifest entry, when the reference is a manifest name
    path: Path  # where it is looked for (the first search folder that has it, else the weights folder)

    @property
    def present(self) -> bool:
        return self.path.is_file()

    @property
    def filename(self) -> str:
        return self.spec.filename if self.spec is not None else self.path.name

    @property
    def source(self) -> str:
        return self.spec.source if self.spec is not None else f"the file {self.path}"


@dataclass(frozen=True)
class Preset:
    """A parsed preset file."""

    name: str
    description: str
    resolution: int
    model: dict[str, Any]
    weights: tuple[WeightFile, ...]
    path: Path
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def references(self) -> list[str]:
        """Every file the preset names (init-arg checkpoints, then the weights section), in order, once."""
        found = [value for _, _, value in iter_weight_args(self.model)]
        found += [w.file for w in self.weights]
        return list(dict.fromkeys(found))

    def file_needs(self, search: Sequence[str | os.PathLike[str]] = ()) -> list[FileNeed]:
        """Where each file is found: ``search`` folders first (e.g. a release folder), then the weights
        folder for manifest names, or the preset's folder for relative paths."""
        fill_manifest()
        return [locate(ref, self.path.parent, search) for ref in self.references()]

    def missing(self, search: Sequence[str | os.PathLike[str]] = ()) -> list[FileNeed]:
        return [need for need in self.file_needs(search) if not need.present]


_manifest_filled = False


def default_folder(spec: WeightSpec) -> Path:
    """Where the resolver looks for a manifest entry: the package (shipped files) or the weights folder."""
    return SHIPPED_DIR if spec.shipped else weights_dir()


def fill_manifest() -> None:
    """Import the modules that register manifest entries (once), so manifest names are recognised."""
    global _manifest_filled
    if not _manifest_filled:
        from ifadit.weights_report import import_manifest_modules

        import_manifest_modules()
        _manifest_filled = True


def iter_weight_args(node: Any, where: str = "model") -> Iterator[tuple[str, str, str]]:
    """``(config path, argument, value)`` of every file-naming init argument in a ``model`` section."""
    if isinstance(node, Mapping):
        init = node.get("init_args")
        if "class_path" in node and isinstance(init, Mapping):
            for arg in WEIGHT_ARGS:
                if isinstance(init.get(arg), str):
                    yield where, arg, init[arg]
        for key, value in node.items():
            yield from iter_weight_args(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from iter_weight_args(item, f"{where}[{i}]")


def locate(reference: str, base: Path, search: Sequence[str | os.PathLike[str]] = ()) -> FileNeed:
    """A manifest name -> its file in the first ``search`` folder that has it, else where the resolver
    looks (the weights folder, or the package for shipped files); a path -> itself (relative to ``base``)."""
    spec = MANIFEST.get(reference)
    if spec is None:
        path = Path(reference).expanduser()
        return FileNeed(reference, None, path if path.is_absolute() else base / path)
    for folder in search:
        candidate = Path(folder).expanduser() / spec.filename
        if candidate.is_file():
            return FileNeed(reference, spec, candidate)
    return FileNeed(reference, spec, default_folder(spec) / spec.filename)


def available_presets() -> dict[str, Path]:
    """The presets shipped in the package: name -> YAML file."""
    return {
        p.stem: p for p in sorted(PRESET_DIR.iterdir()) if p.suffix in PRESET_SUFFIXES and p.is_file()
    }


def find_preset(name: str) -> Path | None:
    """The YAML of the preset ``name`` (the underscore spelling works too), or None."""
    presets = available_presets()
    wanted = canonical_name(name)
    return next((path for key, path in presets.items() if canonical_name(key) == wanted), None)


def unknown_model_message(value: str) -> str:
    """One line for a ``--model`` value that is neither a preset nor an existing file."""
    known = ", ".join(available_presets()) or "(none)"
    suffix = Path(value).suffix
    if suffix in PRESET_SUFFIXES:
        return f"preset file not found: {value} (shipped presets: {known})"
    if os.sep in value or suffix in (".ckpt", ".safetensors", ".pt", ".pth"):
        return f"checkpoint file not found: {value} (--model also takes a preset: {known})"
    return (
        f"unknown model {value!r}: not a preset nor an existing file; presets: {known} "
        "('ifadit models' lists them; a path may be a .ckpt from 'ifadit fit', a .safetensors from "
        "'ifadit convert' or a preset .yaml)"
    )


def load_preset(name_or_path: str | os.PathLike[str]) -> Preset:
    """A shipped preset by name, or a preset YAML file by path."""
    text = str(name_or_path)
    path = Path(text).expanduser() if Path(text).suffix in PRESET_SUFFIXES else find_preset(text)
    if path is None or not path.is_file():
        raise PresetError(unknown_model_message(text))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PresetError(f"preset {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_preset(data, path)


def parse_preset(data: Any, path: Path) -> Preset:
    """Check a preset's YAML content; every problem is one line naming the file."""
    where = f"preset {path}"
    if not isinstance(data, dict):
        raise PresetError(f"{where}: expected a mapping with 'name', 'model' and 'weights'")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise PresetError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    name = data.get("name")
    if not isinstance(name, str) or (path.parent == PRESET_DIR and name != path.stem):
        raise PresetError(f"{where}: 'name' must be a string equal to the file name ({path.stem!r})")
    model = data.get("model")
    if not isinstance(model, dict) or "identity_encoder" not in model:
        raise PresetError(f"{where}: 'model' must be an IFADITTask model section (as in a recipe)")
    resolution = data.get("resolution")
    if not isinstance(resolution, int) or resolution < 8:
        raise PresetError(f"{where}: 'resolution' must be the aligned face size in pixels")
    weights = tuple(_weight_file(component, entry, where) for component, entry in _mapping(data, "weights"))
    return Preset(
        name=name,
        description=str(data.get("description") or "").strip(),
        resolution=resolution,
        model=model,
        weights=weights,
        path=path,
        notes=str(data.get("notes") or "").strip(),
    )


def _mapping(data: dict[str, Any], key: str) -> list[tuple[str, Any]]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise PresetError(f"preset '{data.get('name')}': {key!r} must be a mapping")
    return list(value.items())


def _weight_file(component: str, entry: Any, where: str) -> WeightFile:
    if isinstance(entry, str):
        entry = {"file": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise PresetError(f"{where}: weights.{component} must be a manifest name, a path or {{file: ...}}")
    unknown = sorted(set(entry) - {"file", "layout", "prefix", "match"})
    if unknown:
        raise PresetError(f"{where}: weights.{component}: unknown key {unknown[0]!r}")
    layout = entry.get("layout")
    if layout is not None and layout not in LAYOUTS:
        raise PresetError(f"{where}: weights.{component}: layout must be one of {', '.join(LAYOUTS)}")
    match = entry.get("match", "name")
    if match not in ("name", "position"):
        raise PresetError(f"{where}: weights.{component}: match must be 'name' or 'position'")
    return WeightFile(component, entry["file"], layout, str(entry.get("prefix") or ""), match)


def require_files(preset: Preset, search: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Path]:
    """reference -> path of every file the preset needs; one-line :class:`WeightsError` naming the missing
    ones (``ifadit weights`` says where each comes from)."""
    needs = preset.file_needs(search)
    missing = [need for need in needs if not need.present]
    if missing:
        names = ", ".join(need.filename for need in missing)
        folders = [*(str(Path(f)) for f in search), str(weights_dir())]
        raise WeightsError(
            f"preset {preset.name!r} needs {len(missing)} missing file(s): {names} (looked in "
            f"{' and '.join(dict.fromkeys(folders))}; set IFADIT_WEIGHTS to change the weights folder); "
            "'ifadit weights' says where to obtain each"
        )
    return {need.reference: need.path for need in needs}


__all__ = [
    "LAYOUTS",
    "PRESET_DIR",
    "FileNeed",
    "Preset",
    "PresetError",
    "WeightFile",
    "available_presets",
    "default_folder",
    "fill_manifest",
    "find_preset",
    "iter_weight_args",
    "load_preset",
    "locate",
    "parse_preset",
    "require_files",
    "unknown_model_message",
]
