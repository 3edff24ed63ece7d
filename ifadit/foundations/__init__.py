"""The SynthFaces foundations: pretrained networks shipped inside the package as safetensors.

The quickstart stands on them as the paper stands on pretrained StyleGAN2 and ArcFace weights. Each is
trained by a recipe in ``recipes/foundations/`` and exported here by ``python -m ifadit.foundations``
(``make foundations`` does both), which writes ``<name>.safetensors`` and its sha256 into
``manifest.json``; :mod:`ifadit.weights` registers that manifest, so components load the files by name
(``checkpoint: synthfaces64-identity-encoder``) through the same resolver as public checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import yaml

from ifadit import registry
from ifadit.data.datamodule import FaceDataModule
from ifadit.training.render import standardize_codes
from ifadit.weights import (
    SHIPPED_DIR,
    SHIPPED_MANIFEST,
    WeightsError,
    load_checkpoint,
    load_state_dict_by_name,
    sha256_of,
    strip_prefix,
)


@dataclass(frozen=True)
class Foundation:
    """One shipped network: the run that trains it and where its tensors sit in that run's checkpoint."""

    name: str
    run: str  # run folder under outputs/checkpoints/ifadit (the recipe's default run name)
    prefix: str  # the component's key prefix in the Lightning checkpoint
    recipe: str
    description: str
    # the renderer's pair ships with its W+ codes standardized (ifadit.training.render.standardize_codes)
    standardized_codes: bool = False


FOUNDATIONS: tuple[Foundation, ...] = (
    Foundation(
        "synthfaces64-identity-encoder", "foundations-recognizer", "recognizer.",
        "recipes/foundations/recognizer.yaml",
        "identity encoder E_id: RegNetX-200MF, 128-d ArcFace embedding of 64 px SynthFaces",
    ),
    Foundation(
        "synthfaces64-judge", "foundations-judge", "recognizer.", "recipes/foundations/judge.yaml",
        "independent judge: ResNet-10t, 128-d ArcFace embedding of 64 px SynthFaces (scores only)",
    ),
    Foundation(
        "synthfaces64-generator", "foundations-renderer", "generator.", "recipes/foundations/renderer.yaml",
        "StyleGAN2 generator, 64 px, style_dim 128, trained as a SynthFaces renderer (standardized W+)",
        standardized_codes=True,
    ),
    Foundation(
        "synthfaces64-parameter-mapper", "foundations-renderer", "parameter_mapper.",
        "recipes/foundations/renderer.yaml",
        "the renderer's parameter mapper: 86 SynthFaces parameters -> standardized W+ (10 x 128)",
        standardized_codes=True,
    ),
    Foundation(
        "synthfaces64-attribute-encoder", "foundations-disentangle", "model.attribute_encoder.",
        "recipes/foundations/disentangle.yaml",
        "phase-1 attribute encoder E_attr: ResNet-10t, 10 x 128 style codes for the SynthFaces renderer",
    ),
    Foundation(
        "synthfaces64-mapper", "foundations-disentangle", "model.mapper.",
        "recipes/foundations/disentangle.yaml",
        "phase-1 latent mapper M: identity (128) + style codes -> the renderer's standardized W+",
    ),
)


def export(
    foundation: Foundation,
    checkpoint: str | Path,
    folder: Path = SHIPPED_DIR,
    dtype: torch.dtype = torch.float16,
) -> dict[str, str]:
    """Write ``foundation``'s tensors from a Lightning checkpoint as ``<name>.safetensors`` in ``folder``
    (floating tensors in ``dtype``) and return its manifest entry."""
    state = load_checkpoint(checkpoint, weights_only=True, mmap=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{checkpoint} holds no state dict")
    if foundation.standardized_codes:
        state = standardized_renderer_state(state, foundation.recipe)
    tensors = {
        key[len(foundation.prefix) :]: (value.to(dtype) if value.is_floating_point() else value).contiguous()
        for key, value in state.items()
        if key.startswith(foundation.prefix)
    }
    if not tensors:
        raise WeightsError(f"{checkpoint} has no tensors under {foundation.prefix!r} for {foundation.name}")
    path = Path(folder) / f"{foundation.name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, path)
    return {
        "filename": path.name,
        "sha256": sha256_of(path),
        "description": foundation.description,
        "recipe": foundation.recipe,
    }


def standardized_renderer_state(state: dict[str, torch.Tensor], recipe: str) -> dict[str, torch.Tensor]:
    """A render run's state with its W+ codes standardized over the recipe's training faces: the generator,
    the parameter mapper and the data are built from the recipe exactly as training built them."""
    config = yaml.safe_load(Path(recipe).read_text())
    parts = {}
    for prefix, group in (("generator.", "generators"), ("parameter_mapper.", "mappers")):
        spec = config["model"][prefix.rstrip(".")]
        parts[prefix] = registry.create(group, spec["class_path"], **spec.get("init_args", {}))
        load_state_dict_by_name(parts[prefix], strip_prefix(state, prefix), what=f"{recipe} run, {prefix}")
    data = FaceDataModule(**config["data"])
    data.setup("fit")
    parameters = data.datasets["train"].parameters.float()
    standardize_codes(parts["generator."], parts["parameter_mapper."], parameters)
    standardized = {prefix + k: v for prefix, part in parts.items() for k, v in part.state_dict().items()}
    return {**state, **standardized}


def update_manifest(entries: dict[str, dict[str, str]], manifest: Path = SHIPPED_MANIFEST) -> None:
    """Merge ``entries`` into the manifest (other entries stay), keys sorted so diffs stay small."""
    current = json.loads(manifest.read_text()) if manifest.is_file() else {}
    current.update(entries)
    manifest.write_text(json.dumps(dict(sorted(current.items())), indent=2) + "\n")
