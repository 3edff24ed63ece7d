"""SynthFaces: cartoon faces rendered on the fly, with identity labels and per-image nuisance attributes.

No identity-labelled face set (and no pretrained face weights) can be fetched offline, so the quickstart
trains its recognizer, generator and flow on faces it renders itself. This module holds the dataset and its
disk cache; what an identity and an image are, and how they are drawn, live in
:mod:`ifadit.data.synthfaces_params` (seeded parameters), :mod:`ifadit.data.synthfaces_render` (the face)
and :mod:`ifadit.data.synthfaces_painter` (the shape painter). Their public names are importable from here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ifadit.data.synthfaces_params import (
    IDENTITY_NAMES,
    NUISANCE_NAMES,
    PARAMETER_NAMES,
    IdentityParams,
    identity_param_array,
    normalized_parameters,
    nuisance_param_array,
    split_identities,
)
from ifadit.data.synthfaces_render import render_faces, render_identity

__all__ = [
    "IDENTITY_NAMES",
    "NUISANCE_NAMES",
    "PARAMETER_NAMES",
    "RENDERER_VERSION",
    "SPLITS",
    "IdentityParams",
    "SynthFaces",
    "identity_param_array",
    "normalized_parameters",
    "nuisance_param_array",
    "render_faces",
    "render_identity",
    "split_identities",
]

# Bump when the rendering or the parameter mapping changes: cached sets are regenerated.
RENDERER_VERSION = 3

SPLITS = ("train", "val", "test")


def _atomic_save(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class SynthFaces(Dataset):
    """Identity-labelled synthetic faces, rendered once per parameter set and cached under ``root``.

    Items are ``{"image": (3, H, W) float in [-1, 1], "identity": global identity id, "attributes": float
    tensor of the NUISANCE_NAMES values, "parameters": every parameter the image was rendered from, in
    [-1, 1] (PARAMETER_NAMES; what a renderer trained on SynthFaces reads)}``. The train/val/test splits
    hold disjoint identities.
    ``nuisance`` scales how much images of one identity differ (0: identical pictures).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        size: int = 64,
        num_identities: int = 1000,
        images_per_identity: int = 10,
        seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        nuisance: float = 1.0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if num_identities < 1 or images_per_identity < 1:
            raise ValueError("num_identities and images_per_identity must be positive")
        self.root, self.split, self.size = Path(root), split, int(size)
        self.num_identities, self.images_per_identity, self.seed = num_identities, images_per_identity, seed
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.nuisance = float(nuisance)
        self.identities = split_identities(num_identities, seed, self.split_fractions)[split]
        self.cache_dir = self.root / f"synthfaces-v{RENDERER_VERSION}-{self._digest()}"
        # One row per identity of the split, drawn once: the renderer and the items' parameters both use it.
        self.identity_params = identity_param_array(seed, self.identities)
        self.images, self.identity_labels, self.attributes = self._load_or_render()
        row_of = np.searchsorted(self.identities, self.identity_labels.numpy())
        self.parameters = torch.from_numpy(
            normalized_parameters(self.identity_params[row_of], self.attributes.numpy().astype(np.float64))
        )

    @property
    def num_classes(self) -> int:
        """Identity ids are global, so a classifier head needs ``num_identities`` outputs."""
        return self.num_identities

    def manifest(self) -> dict[str, Any]:
        return {
            "dataset": "synthfaces",
            "renderer_version": RENDERER_VERSION,
            "size": self.size,
            "num_identities": self.num_identities,
            "images_per_identity": self.images_per_identity,
            "seed": self.seed,
            "split_fractions": list(self.split_fractions),
            "nuisance": self.nuisance,
            "identity_names": list(IDENTITY_NAMES),
            "attribute_names": list(NUISANCE_NAMES),
        }

    def _digest(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest(), sort_keys=True).encode()).hexdigest()[:12]

    def _paths(self) -> dict[str, Path]:
        stem = self.cache_dir / self.split
        return {
            "manifest": stem.with_suffix(".json"),
            "images": self.cache_dir / f"{self.split}-images.npy",
            "identity": self.cache_dir / f"{self.split}-identity.npy",
            "attributes": self.cache_dir / f"{self.split}-attributes.npy",
        }

    def _expected_manifest(self) -> dict[str, Any]:
        return {
            **self.manifest(),
            "split": self.split,
            "count": len(self.identities) * self.images_per_identity,
        }

    def _load_or_render(self) -> tuple[Tensor, Tensor, Tensor]:
        paths = self._paths()
        expected = self._expected_manifest()
        try:
            found = json.loads(paths["manifest"].read_text())
            if found == expected:
                images = np.load(paths["images"])
                labels = np.load(paths["identity"])
                attributes = np.load(paths["attributes"])
                count = expected["count"]
                if (
                    images.shape == (count, 3, self.size, self.size)
                    and len(labels) == len(attributes) == count
                ):
                    return torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(attributes)
        except (OSError, ValueError):
            pass  # missing or damaged cache: render again
        images, labels, attributes = self._render()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Arrays first, manifest last: the manifest marks a complete split.
        _atomic_save(paths["images"], lambda f: np.save(f, images))
        _atomic_save(paths["identity"], lambda f: np.save(f, labels))
        _atomic_save(paths["attributes"], lambda f: np.save(f, attributes))
        _atomic_save(paths["manifest"], lambda f: f.write(json.dumps(expected, indent=2).encode()))
        return torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(attributes)

    def _render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        per = self.images_per_identity
        identity_params = np.repeat(self.identity_params, per, axis=0)
        nuisance = [nuisance_param_array(self.seed, int(i), per, self.nuisance) for i in self.identities]
        nuisance_params = np.concatenate(nuisance) if nuisance else np.zeros((0, len(NUISANCE_NAMES)))
        labels = np.repeat(self.identities.astype(np.int64), per)
        images = np.empty((len(labels), 3, self.size, self.size), dtype=np.uint8)
        block = 2048  # bounds the float32 working copy
        for start in range(0, len(labels), block):
            rendered = render_faces(
                identity_params[start : start + block], nuisance_params[start : start + block], self.size
            )
            images[start : start + block] = (
                rendered.add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)
            )
        return images, labels, nuisance_params.astype(np.float32)

    def __len__(self) -> int:
        return len(self.identity_labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.images[index].float().div_(127.5).sub_(1.0),
            "identity": int(self.identity_labels[index]),
            "attributes": self.attributes[index],
            "parameters": self.parameters[index],
        }
