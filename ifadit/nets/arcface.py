"""ArcFace IR-SE50 identity encoder, with the pre-processing pSp's ID loss (and iFADIT) put in front of it."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ifadit.nets.base import IdentityEncoder
from ifadit.nets.image import resize_square
from ifadit.nets.irse import IRBackbone, complete_batchnorm_counters, strip_data_parallel
from ifadit.weights import (
    MANIFEST,
    WeightsError,
    WeightSpec,
    load_checkpoint,
    load_state_dict_by_name,
    register_weights,
    resolve,
)

ARCFACE_IRSE50 = register_weights(
    WeightSpec(
        name="arcface-irse50",
        filename="model_ir_se50.pth",
        layout="treb1en",
        source=(
            "TreB1eN/InsightFace_Pytorch (README, pretrained 'IR-SE50') or the 'IR-SE50 Model' link in "
            "eladrich/pixel2style2pixel's README (pretrained_models/model_ir_se50.pth)"
        ),
        sha256=None,
        description="ArcFace IR-SE50, TreB1eN plain state dict",
    )
)

# FFHQ-aligned 256 px faces: rows 35:223, columns 32:220 hold the face ArcFace was trained on.
DEFAULT_CROP: tuple[int, int, int, int] = (35, 223, 32, 220)


def read_treb1en_state_dict(path: str | os.PathLike[str], what: str = "ArcFace checkpoint") -> dict[str, Any]:
    """A TreB1eN plain state dict (``model_ir_se50.pth`` layout), ``module.`` prefixes removed."""
    state = load_checkpoint(path)
    if not isinstance(state, Mapping):
        raise WeightsError(f"{what} {path}: expected a plain state dict, got {type(state).__name__}")
    if "state_dict" in state:
        raise WeightsError(
            f"{what} {path} is a container with 'state_dict' (pSp/e4e or training checkpoint?); "
            "it must be TreB1eN's plain state dict such as model_ir_se50.pth"
        )
    return strip_data_parallel(state)


def load_treb1en_backbone(backbone: IRBackbone, path: str | os.PathLike[str]) -> None:
    """Load a TreB1eN plain state dict strictly by name."""
    state = complete_batchnorm_counters(backbone, read_treb1en_state_dict(path))
    load_state_dict_by_name(backbone, state, what=f"ArcFace checkpoint {path}")


class ArcFaceEncoder(IdentityEncoder):
    """Frozen ArcFace: [-1, 1] face at ``input_size`` -> fixed crop -> 112 px -> unit-norm 512-d embedding.

    ``checkpoint=None`` looks for ``model_ir_se50.pth`` in the weights folder; when it is absent the
    resolver's error (where to put it, where to get it) is raised unless ``allow_random_init`` asks for an
    untrained network (tests, smoke runs).
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        num_layers: int = 50,
        mode: str = "ir_se",
        input_size: int = 256,
        crop: tuple[int, int, int, int] | None = DEFAULT_CROP,
        frozen: bool = True,
        allow_random_init: bool = False,
        drop_ratio: float = 0.6,
    ) -> None:
        super().__init__()
        if crop is not None:
            top, bottom, left, right = crop
            if not (0 <= top < bottom <= input_size and 0 <= left < right <= input_size):
                raise ValueError(f"crop {crop} does not fit a {input_size}x{input_size} input")
            crop = (int(top), int(bottom), int(left), int(right))
        self.input_size = input_size
        self.crop = crop
        self.frozen = frozen
        self.face_pool = nn.AdaptiveAvgPool2d((112, 112))
        path = self._find_checkpoint(checkpoint, num_layers, mode, allow_random_init)
        if path is None:
            self.backbone = IRBackbone(num_layers, mode, input_size=112, drop_ratio=drop_ratio)
        else:
            # Skip the random init: the strict by-name load overwrites every parameter and buffer or raises.
            with torch.device("meta"):
                self.backbone = IRBackbone(num_layers, mode, input_size=112, drop_ratio=drop_ratio)
            self.backbone.to_empty(device="cpu")
            load_treb1en_backbone(self.backbone, path)
        self.checkpoint_path = None if path is None else str(path)
        if frozen:
            self.requires_grad_(False)
            self.eval()

    @staticmethod
    def _find_checkpoint(
        checkpoint: str | None, num_layers: int, mode: str, allow_random_init: bool
    ) -> Path | None:
        if checkpoint is not None:
            if checkpoint in MANIFEST:
                return resolve(checkpoint)
            return resolve(ARCFACE_IRSE50.name, checkpoint)
        try:
            if (num_layers, mode) != (50, "ir_se"):
                raise WeightsError(
                    f"no default checkpoint for a {mode} {num_layers}-layer ArcFace; give checkpoint=<path>"
                )
            return resolve(ARCFACE_IRSE50.name)
        except WeightsError as exc:
            if not allow_random_init:
                raise
            warnings.warn(f"ArcFaceEncoder uses random weights: {exc}", stacklevel=3)
            return None

    def train(self, mode: bool = True) -> ArcFaceEncoder:
        # A frozen recogniser must keep its BatchNorm statistics even inside a module put in train mode.
        return super().train(False if self.frozen else mode)

    def preprocess(self, images: Tensor) -> Tensor:
        """[-1, 1] images of any size -> the 112 px crops the backbone sees."""
        images = resize_square(images, self.input_size)
        if self.crop is not None:
            top, bottom, left, right = self.crop
            images = images[:, :, top:bottom, left:right]
        return self.face_pool(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(self.preprocess(images))
