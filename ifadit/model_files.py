"""One anonymizer model from any of its three sources: a preset, a training checkpoint or a model file.

* a **preset** (:mod:`ifadit.presets`): YAML shipped in the package that names every pretrained file, built
  here from the weights folder;
* a **training checkpoint** (``.ckpt``) written by ``ifadit fit``, which carries its ``model`` config;
* an **ifadit model file** (``.safetensors``) written by ``ifadit convert``: the task's tensors plus the
  resolved ``model`` config in the safetensors header, so it loads without pickle and without the preset.

:func:`load_model` takes any of them (``ifadit anonymize --model NAME|PATH``). A preset and the model file
converted from the same files hold the same tensors, so they have the same :func:`model_fingerprint` and a
photo anonymized with one is recovered with the other without ``--force``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ifadit.presets import (
    PRESET_SUFFIXES,
    Preset,
    PresetError,
    WeightFile,
    fill_manifest,
    find_preset,
    load_preset,
    locate,
    require_files,
    unknown_model_message,
)
from ifadit.weights import (
    MANIFEST,
    WeightsError,
    load_checkpoint,
    load_state_dict_by_name,
    resolve,
    sha256_of,
    strip_prefix,
)

if TYPE_CHECKING:
    from ifadit.anonymizer import IFADIT
    from ifadit.task import IFADITTask

MODEL_FORMAT = "ifadit-model"
MODEL_FORMAT_VERSION = "1"
CONFIG_METADATA_KEY = "ifadit_model_config"  # the same name training checkpoints store it under
PathLike = str | os.PathLike[str]


@dataclass
class LoadedModel:
    """A model ready to anonymize, and where it came from."""

    task: IFADITTask
    fingerprint: str  # model_fingerprint(), or the sha256 of a .ckpt file
    config: dict[str, Any]  # its model section (files by manifest name, never a local path)
    source: str  # 'preset NAME' or the file it was read from
    files: dict[str, Path] = field(default_factory=dict)  # the pretrained files a preset was built from

    @property
    def model(self) -> IFADIT:
        if self.task.model is None or not self.task.model.keyed:
            raise ValueError(f"{self.source} is not a flow-phase model: anonymizing needs a trained flow")
        return self.task.model


def model_fingerprint(module: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's tensors: the same model gives the same
    value whichever file it was loaded from (photo metadata records it as ``model_sha256``)."""
    digest = hashlib.sha256(b"ifadit-model-fingerprint/1\n")
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().data if flat.numel() else b"")
    return digest.hexdigest()


def resolved_model_config(model_section: Mapping[str, Any]) -> dict[str, Any]:
    """A ``model`` section with every default filled in and class paths expanded (as ``ifadit fit`` stores
    it), so a model file keeps meaning the same model when a default changes later."""
    from jsonargparse import ArgumentParser

    from ifadit.lightning_cli import load_plugins, model_config_for_checkpoint
    from ifadit.task import IFADITTask

    load_plugins()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(IFADITTask, "model", fail_untyped=False, sub_configs=True)
    try:
        parsed = parser.parse_object({"model": json.loads(json.dumps(dict(model_section)))})
    except Exception as exc:  # jsonargparse's own error types; one line for the caller
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"invalid model config: {first}") from None
    return model_config_for_checkpoint(parsed.model)


def _with_paths(node: Any, files: Mapping[str, Path]) -> Any:
    """The model section with every file-naming init argument replaced by the located path."""
    from ifadit.presets import WEIGHT_ARGS

    if isinstance(node, Mapping):
        out = {k: _with_paths(v, files) for k, v in node.items()}
        init = out.get("init_args")
        if "class_path" in out and isinstance(init, dict):
            for arg in WEIGHT_ARGS:
                if isinstance(init.get(arg), str) and init[arg] in files:
                    init[arg] = str(files[init[arg]])
        return out
    if isinstance(node, list):
        return [_with_paths(v, files) for v in node]
    return node


def load_weight_file(module: nn.Module, path: Path, entry: WeightFile, what: str) -> None:
    """Load one file of a preset's ``weights`` section into ``module`` strictly by name."""
    from ifadit.release import load_state_into, read_official_state_dict

    spec = MANIFEST.get(entry.file)
    layout = entry.layout or (spec.layout if spec is not None else None)
    if layout is None:
        layout = "safetensors" if is_model_file(path) else "state-dict"
    source = f"{what} {path}"
    if entry.match != "name" and layout != "ifadit-official":
        raise PresetError(f"{what}: match={entry.match!r} applies to the ifadit-official layout only")
    if layout == "ifadit-official":
        state = read_official_state_dict(path, what)
    elif layout == "safetensors":
        state, _, _ = read_model_file(path)
    elif layout == "state-dict":
        state = load_checkpoint(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, Mapping):
            raise WeightsError(f"{source}: expected a state dict, got {type(state).__name__}")
    else:
        raise PresetError(
            f"{what}: files in the {layout!r} layout are loaded by their component's checkpoint init "
            "argument, not by the weights section"
        )
    if entry.prefix:
        state = strip_prefix(state, entry.prefix)
        if not state:
            raise WeightsError(f"{source}: no tensor under the prefix {entry.prefix!r}")
    if layout == "ifadit-official":
        load_state_into(module, state, source, entry.match)  # type: ignore[arg-type]
    else:
        load_state_dict_by_name(module, dict(state), what=source)


def build_preset(preset: Preset | str, search: Sequence[PathLike] = ()) -> LoadedModel:
    """The model a preset names; its files come from the ``search`` folders first, then the weights folder."""
    from ifadit.lightning_cli import build_task_from_config

    preset = preset if isinstance(preset, Preset) else load_preset(preset)
    fill_manifest()
    files = require_files(preset, search)
    # Files found where the resolver looks anyway keep their manifest name (shipped ones are verified there).
    moved = {ref: path for ref, path in files.items() if path != locate(ref, preset.path.parent).path}
    moved.update({ref: path for ref, path in files.items() if ref not in MANIFEST})
    task = build_task_from_config(_with_paths(preset.model, moved), for_checkpoint=False)
    if task.model is None:
        raise PresetError(f"preset {preset.name!r}: its model section builds no anonymizer (phase?)")
    for entry in preset.weights:
        try:
            module = task.model.get_submodule(entry.component)
        except AttributeError:
            raise PresetError(
                f"preset {preset.name!r}: the model has no component {entry.component!r}"
            ) from None
        path = files[entry.file] if entry.file in moved else resolve(entry.file)  # resolve verifies shipped
        load_weight_file(module, path, entry, f"preset {preset.name!r} {entry.component}")
    task.eval()
    return LoadedModel(task, model_fingerprint(task.model), preset.model, f"preset {preset.name}", files)


# -- ifadit model files (safetensors) ------------------------------------------------------------------------


def is_model_file(path: PathLike) -> bool:
    """A safetensors file (by suffix, or by its header: an 8-byte length, then a JSON object)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and 0 < int.from_bytes(head[:8], "little") < 1 << 30 and head[8:9] == b"{"


def read_model_file(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Any] | None, dict[str, str]]:
    """Tensors, the stored ``model`` config (None if absent) and the header metadata of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - not a dict
    except FileNotFoundError:
        raise WeightsError(f"model file not found: {path}") from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise WeightsError(f"cannot read safetensors file {path}: {type(exc).__name__}: {first}") from None
    config = None
    if CONFIG_METADATA_KEY in metadata:
        try:
            config = json.loads(metadata[CONFIG_METADATA_KEY])
        except json.JSONDecodeError:
            raise WeightsError(f"{path}: its stored model config is not valid JSON") from None
    return state, config, metadata


def write_model_file(
    path: PathLike, task: nn.Module, config: Mapping[str, Any], extra: Mapping[str, str] | None = None
) -> Path:
    """The task's tensors and its ``model`` config as one safetensors file, written atomically."""
    from safetensors.torch import save_file

    from ifadit import __version__

    path = Path(path)
    state: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, tensor in task.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        state[key] = tensor.clone() if pointer in seen else tensor  # safetensors refuses shared storage
        seen.add(pointer)
    metadata = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "ifadit_version": __version__,
        CONFIG_METADATA_KEY: json.dumps(dict(config), sort_keys=True),
        **dict(extra or {}),
    }
    partial = path.with_name(path.name + ".partial")
    try:
        save_file(state, str(partial), metadata=metadata)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def load_checkpoint_model(
    checkpoint: PathLike, config: PathLike | Mapping[str, Any] | None = None
) -> LoadedModel:
    """A ``.ckpt`` from ``ifadit fit`` or a ``.safetensors`` from ``ifadit convert``; ``config`` gives the
    recipe (path or mapping) of a checkpoint that carries no model config."""
    from ifadit.lightning_cli import MODEL_CONFIG_KEY, build_task_from_config

    if is_model_file(checkpoint):
        state, stored, _ = read_model_file(checkpoint)
        fingerprint = None
    else:
        loaded = load_checkpoint(checkpoint, weights_only=True)
        if not isinstance(loaded, dict):
            raise ValueError(f"{checkpoint} is not a training checkpoint")
        stored = loaded.get(MODEL_CONFIG_KEY) if isinstance(loaded.get(MODEL_CONFIG_KEY), dict) else None
        state = loaded.get("state_dict", loaded)
        fingerprint = sha256_of(checkpoint)
    if config is not None:
        model_config = recipe_model_section(config)
    elif stored is not None:
        model_config = stored
    else:
        raise ValueError(
            f"{checkpoint} carries no model config (written before checkpoints stored one): "
            "give the recipe it was trained with (config=..., --config)"
        )
    task = build_task_from_config(model_config)
    load_state_dict_by_name(task, state, what=str(checkpoint))
    task.eval()
    if fingerprint is None:
        fingerprint = model_fingerprint(task.model) if task.model is not None else sha256_of(checkpoint)
    return LoadedModel(task, fingerprint, dict(model_config), str(checkpoint))


def recipe_model_section(config: PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` section of a recipe (a YAML path or an already-loaded mapping)."""
    import yaml

    if isinstance(config, Mapping):
        data: Any = dict(config)
    else:
        try:
            data = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"config file not found: {config}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{config} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{config} has no 'model' section")
    return data["model"]


def resolve_model(value: PathLike) -> Preset | Path:
    """``--model NAME|PATH``: an existing file (a preset .yaml is read as a preset), else a preset name;
    anything else is a one-line :class:`PresetError` listing the presets."""
    text = str(value)
    path = Path(text).expanduser()
    if path.is_file():
        return load_preset(path) if path.suffix in PRESET_SUFFIXES else path
    if find_preset(text) is not None:
        return load_preset(text)
    raise PresetError(unknown_model_message(text))


def load_model(value: PathLike, config: PathLike | Mapping[str, Any] | None = None) -> LoadedModel:
    """The model ``--model NAME|PATH`` names (``config``: the recipe of an old checkpoint only)."""
    target = resolve_model(value)
    if isinstance(target, Preset):
        if config is not None:
            raise ValueError(f"--config applies to checkpoints; preset {target.name!r} carries its own model")
        return build_preset(target)
    return load_checkpoint_model(target, config)


# -- converting the official release ----------------------------------------------------------------------


@dataclass
class Converted:
    """What ``ifadit convert`` wrote, and from which release files."""

    path: Path
    preset: str
    fingerprint: str
    release_files: dict[str, str]  # file name -> sha256 of the release files converted
    size_bytes: int


def convert_release(
    release_dir: PathLike,
    out: PathLike,
    preset: str = "ifadit-ffhq256-official",
    overwrite: bool = False,
) -> Converted:
    """An official release folder -> one ifadit model file (``.safetensors``) of the preset's model.

    The release files (layout ``ifadit-official``) must be in ``release_dir``; the public weights the preset
    also needs (StyleGAN2, ArcFace) are taken from there too, else from the weights folder. ``out`` may be a
    folder (then ``<preset>.safetensors`` is written in it)."""
    release = Path(release_dir).expanduser()
    if not release.is_dir():
        raise ValueError(f"release folder not found: {release}")
    spec = load_preset(preset)
    fill_manifest()
    official = [n for n in spec.file_needs([release]) if n.spec and n.spec.layout == "ifadit-official"]
    if not official:
        raise PresetError(f"preset {spec.name!r} uses no official release file: nothing to convert")
    absent = [n.filename for n in official if not (release / n.filename).is_file()]
    if absent:
        raise WeightsError(
            f"release folder {release} lacks {', '.join(absent)} (the official iFADIT release files; "
            "'ifadit weights' says where to obtain them)"
        )
    target = Path(out).expanduser()
    if target.is_dir():
        target = target / f"{spec.name}.safetensors"
    if target.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite {target} (--overwrite replaces it)")
    built = build_preset(spec, search=[release])
    release_files = {n.filename: sha256_of(n.path) for n in official}
    extra = {"preset": spec.name, "release_files": json.dumps(release_files, sort_keys=True)}
    write_model_file(target, built.task, resolved_model_config(spec.model), extra)
    return Converted(target, spec.name, built.fingerprint, release_files, target.stat().st_size)


__all__ = [
    "CONFIG_METADATA_KEY",
    "MODEL_FORMAT",
    "Converted",
    "LoadedModel",
    "build_preset",
    "convert_release",
    "is_model_file",
    "load_checkpoint_model",
    "load_model",
    "load_weight_file",
    "model_fingerprint",
    "read_model_file",
    "recipe_model_section",
    "resolve_model",
    "resolved_model_config",
    "write_model_file",
]
