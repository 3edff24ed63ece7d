"""pSp's GradualStyleEncoder (and e4e's Encoder4Editing, which shares its parameters) as an attribute encoder.

Module names follow pSp so that ``ckpt["state_dict"]`` entries under ``encoder.`` load by name:
``input_layer``, ``body`` (IR-SE50, TreB1eN layout), ``styles.N.{convs,linear}``, ``latlayer1``,
``latlayer2``. Styles ``0..2`` read the 16x16 map (c3), ``3..6`` the 32x32 FPN map, the rest the 64x64
FPN map (sizes at a 256 px input).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifadit.nets.arcface import ARCFACE_IRSE50, read_treb1en_state_dict
from ifadit.nets.base import AttributeEncoder
from ifadit.nets.image import resize_square
from ifadit.nets.irse import complete_batchnorm_counters, make_body, make_input_layer, stage_ends
from ifadit.weights import (
    MANIFEST,
    WeightsError,
    WeightSpec,
    load_checkpoint,
    load_state_dict_by_name,
    register_weights,
    resolve,
    strip_prefix,
)

PSP_FFHQ_ENCODE = register_weights(
    WeightSpec(
        name="psp-ffhq-encode",
        filename="psp_ffhq_encode.pt",
        layout="psp",
        source="eladrich/pixel2style2pixel README, pretrained 'FFHQ Inversion' model",
        sha256=None,
        description="pSp FFHQ inversion encoder + StyleGAN2 1024 px (18 styles)",
    )
)
E4E_FFHQ_ENCODE = register_weights(
    WeightSpec(
        name="e4e-ffhq-encode",
        filename="e4e_ffhq_encode.pt",
        layout="psp",
        source="omertov/encoder4editing README, pretrained 'FFHQ Inversion' model",
        sha256=None,
        description="e4e FFHQ inversion encoder + StyleGAN2 1024 px (18 styles)",
    )
)

COARSE_END = 3  # styles [0, 3) come from the 16x16 map
MIDDLE_END = 7  # styles [3, 7) from the 32x32 map, the rest from the 64x64 map
STYLE_DIM = 512
ENCODER_TYPES: tuple[str, ...] = ("GradualStyleEncoder", "Encoder4Editing")


def n_styles_for(output_size: int) -> int:
    """Number of W+ entries a StyleGAN2 generator of ``output_size`` px takes (14 at 256, 18 at 1024)."""
    log_size = int(math.log2(output_size)) if output_size > 0 else 0
    if output_size < 4 or 2**log_size != output_size:
        raise ValueError(f"output_size must be a power of two >= 4, got {output_size}")
    return 2 * log_size - 2


def output_size_for(n_styles: int) -> int:
    return 2 ** ((n_styles + 2) // 2)


class EqualLinear(nn.Module):
    """StyleGAN2's equalised-lr linear layer (``weight`` stored unscaled, scaled at run time)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 3x3 convs bring a ``spatial``-px map to 1x1, then one EqualLinear."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, stride=2, padding=1),
                nn.LeakyReLU(),
            ]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels, lr_mul=1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(
                f"style block reduced its map to {tuple(x.shape[-2:])}, not 1x1: input too large"
            )
        return self.linear(x.flatten(1))


def _upsample_add(top: Tensor, lateral: Tensor) -> Tensor:
    return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class GradualStyleEncoder(nn.Module):
    """IR-SE body + FPN + one GradualStyleBlock per W+ entry, pSp's (or with ``progressive`` e4e's) encoder.

    e4e predicts one ``w0`` from the coarsest map and adds per-style deltas to it; its parameters have the
    same names and shapes as pSp's, only the combination differs.
    """

    def __init__(
        self,
        n_styles: int = 14,
        num_layers: int = 50,
        mode: str = "ir_se",
        input_nc: int = 3,
        progressive: bool = False,
    ) -> None:
        super().__init__()
        if n_styles < 1:
            raise ValueError(f"n_styles must be positive, got {n_styles}")
        self.n_styles = n_styles
        self.progressive = progressive
        # pSp taps the body after units 6, 20, 23 of IR-50: the ends of stages 2, 3 and 4.
        self.taps = stage_ends(num_layers)[1:]
        self.input_layer = make_input_layer(input_nc)
        self.body = make_body(num_layers, mode)
        spatial = [16 if i < COARSE_END else 32 if i < MIDDLE_END else 64 for i in range(n_styles)]
        self.styles = nn.ModuleList(GradualStyleBlock(STYLE_DIM, STYLE_DIM, s) for s in spatial)
        self.latlayer1 = nn.Conv2d(256, 512, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(128, 512, kernel_size=1, stride=1, padding=0)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The three body taps c1 (128 ch, 1/4), c2 (256 ch, 1/8), c3 (512 ch, 1/16)."""
        x = self.input_layer(x)
        taps: list[Tensor] = []
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index in self.taps:
                taps.append(x)
        c1, c2, c3 = taps
        return c1, c2, c3

    def forward(self, x: Tensor) -> Tensor:
        c1, c2, c3 = self.features(x)
        maps = [c3]
        if self.n_styles > COARSE_END:
            maps.append(_upsample_add(c3, self.latlayer1(c2)))
        if self.n_styles > MIDDLE_END:
            maps.append(_upsample_add(maps[1], self.latlayer2(c1)))
        level = [0 if i < COARSE_END else 1 if i < MIDDLE_END else 2 for i in range(self.n_styles)]
        codes = torch.stack([style(maps[lv]) for style, lv in zip(self.styles, level, strict=True)], dim=1)
        if self.progressive:
            codes = torch.cat([codes[:, :1], codes[:, :1] + codes[:, 1:]], dim=1)
        return codes


@dataclass
class PSPCheckpoint:
    """The parts of a pSp / e4e training checkpoint, read without building any network."""

    path: str
    encoder_state: dict[str, Tensor]
    decoder_state: dict[str, Tensor]
    n_styles: int
    encoder_type: str
    latent_avg: Tensor | None = None
    opts: dict[str, Any] = field(default_factory=dict)

    @property
    def output_size(self) -> int:
        return output_size_for(self.n_styles)

    @property
    def start_from_latent_avg(self) -> bool:
        # pSp writes latent_avg only when it trained relative to it; opts, when present, say so explicitly.
        if "start_from_latent_avg" in self.opts:
            return bool(self.opts["start_from_latent_avg"]) and self.latent_avg is not None
        return self.latent_avg is not None


def _torch_load_psp(path: str | os.PathLike[str], allow_pickle: bool) -> Any:
    """Tensors-only load first; pSp stores ``opts`` as a dict, forks sometimes as an ``argparse.Namespace``.

    A Namespace is admitted to the weights-only unpickler (it only carries attributes); anything else needs
    ``allow_pickle=True``, which runs the file's pickle code and is for trusted files only.
    """
    if not Path(path).is_file():
        raise WeightsError(f"pSp checkpoint not found: {path}")
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return load_checkpoint(path, weights_only=True)
        except WeightsError as exc:
            if not allow_pickle:
                raise WeightsError(
                    f"{exc}; if the file holds pickled Python objects besides tensors and you trust it, "
                    "pass allow_pickle=True"
                ) from exc
    return load_checkpoint(path, weights_only=False)


_STYLE_KEY = re.compile(r"^styles\.(\d+)\.")


def read_psp_checkpoint(path: str | os.PathLike[str], allow_pickle: bool = False) -> PSPCheckpoint:
    """Parse ``{"state_dict": {"encoder.…", "decoder.…"}, "latent_avg"?, "opts"?}`` (pSp and e4e)."""
    raw = _torch_load_psp(path, allow_pickle)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("state_dict"), Mapping):
        raise WeightsError(
            f"pSp checkpoint {path}: expected a dict with a 'state_dict' entry (pSp/e4e layout); "
            f"got {type(raw).__name__}"
            + (f" with keys {sorted(map(str, raw))[:6]}" if isinstance(raw, Mapping) else "")
            + (
                " — this looks like a plain backbone state dict; use backbone_checkpoint="
                if isinstance(raw, Mapping) and "input_layer.0.weight" in raw
                else ""
            )
        )
    state = raw["state_dict"]
    encoder_state = strip_prefix(state, "encoder.")
    if not encoder_state:
        raise WeightsError(f"pSp checkpoint {path}: no 'encoder.*' entries in its state_dict")
    style_ids = {int(m.group(1)) for k in encoder_state if (m := _STYLE_KEY.match(k))}
    opts_raw = raw.get("opts") or {}
    opts = dict(vars(opts_raw)) if isinstance(opts_raw, argparse.Namespace) else dict(opts_raw)
    encoder_type = str(opts.get("encoder_type", "GradualStyleEncoder"))
    if encoder_type not in ENCODER_TYPES or not style_ids:
        found = "no 'encoder.styles.N.*' entries" if not style_ids else "no per-style blocks"
        raise WeightsError(
            f"pSp checkpoint {path}: {found} (encoder_type {encoder_type!r}); only "
            f"{' and '.join(ENCODER_TYPES)} checkpoints can be loaded as a W+ attribute encoder"
        )
    latent_avg = raw.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, Tensor):
        raise WeightsError(
            f"pSp checkpoint {path}: 'latent_avg' is a {type(latent_avg).__name__}, not a tensor"
        )
    return PSPCheckpoint(
        path=str(path),
        encoder_state=encoder_state,
        decoder_state=strip_prefix(state, "decoder."),
        n_styles=max(style_ids) + 1,
        encoder_type=encoder_type,
        latent_avg=latent_avg,
        opts=opts,
    )


def _latent_avg_rows(latent_avg: Tensor, n_styles: int, where: str) -> Tensor:
    """pSp stores latent_avg as (512,), (1, 512) or repeated to (n_styles, 512); keep one row per style."""
    avg = latent_avg.detach().float()
    if avg.dim() == 1:
        avg = avg.unsqueeze(0)
    if avg.dim() != 2 or avg.shape[-1] != STYLE_DIM or avg.shape[0] not in (1, n_styles):
        raise WeightsError(
            f"{where}: latent_avg has shape {tuple(latent_avg.shape)}, expected ({STYLE_DIM},), "
            f"(1, {STYLE_DIM}) or ({n_styles}, {STYLE_DIM})"
        )
    return avg.expand(n_styles, STYLE_DIM).clone()


def _resolve(value: str | os.PathLike[str], fallback_name: str) -> str:
    if isinstance(value, str) and value in MANIFEST:
        return str(resolve(value))
    return str(resolve(fallback_name, value))


class PSPEncoder(AttributeEncoder):
    """[-1, 1] faces -> W+ codes (B, n_styles, 512) with ``n_styles = 2 log2(output_size) - 2``.

    ``checkpoint``: a pSp/e4e checkpoint (path or manifest name). ``backbone_checkpoint``: instead, an
    ArcFace IR-SE50 plain state dict whose ``input_layer``/``body`` initialise the encoder, as pSp does
    before training. ``add_latent_avg=None`` follows the checkpoint (``opts.start_from_latent_avg``, or
    the presence of ``latent_avg`` when it has no opts); True/False force it.
    ``input_size``: images are resized to it; pSp trains at 256, smaller values only make tests cheap.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        output_size: int | None = 256,
        num_layers: int = 50,
        mode: str = "ir_se",
        input_nc: int = 3,
        input_size: int = 256,
        encoder_type: str | None = None,
        add_latent_avg: bool | None = None,
        backbone_checkpoint: str | None = None,
        frozen: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        super().__init__()
        if checkpoint is not None and backbone_checkpoint is not None:
            raise ValueError("give checkpoint (a whole pSp/e4e encoder) or backbone_checkpoint, not both")
        if encoder_type is not None and encoder_type not in ENCODER_TYPES:
            raise ValueError(f"encoder_type must be one of {ENCODER_TYPES}, got {encoder_type!r}")
        ckpt = None
        if checkpoint:
            ckpt = read_psp_checkpoint(_resolve(checkpoint, "psp-ffhq-encode"), allow_pickle)
        if ckpt is not None:
            if output_size is not None and n_styles_for(output_size) != ckpt.n_styles:
                raise WeightsError(
                    f"pSp checkpoint {ckpt.path} has {ckpt.n_styles} styles (a {ckpt.output_size} px "
                    f"StyleGAN2) but PSPEncoder(output_size={output_size}) needs {n_styles_for(output_size)} "
                    f"styles; use a checkpoint trained for {output_size} px or output_size={ckpt.output_size}"
                )
            encoder_type = encoder_type or ckpt.encoder_type
            first_conv = ckpt.encoder_state.get("input_layer.0.weight")
            input_nc = int(first_conv.shape[1]) if isinstance(first_conv, Tensor) else input_nc
            n_styles = ckpt.n_styles
        elif output_size is None:
            raise ValueError("output_size=None (take it from the checkpoint) needs a checkpoint")
        else:
            n_styles = n_styles_for(output_size)
        self.n_styles = n_styles
        self.output_size = output_size_for(n_styles)
        self.input_size = input_size
        self.encoder_type = encoder_type or "GradualStyleEncoder"
        self.frozen = frozen
        progressive = self.encoder_type == "Encoder4Editing"
        if ckpt is None:
            self.encoder = GradualStyleEncoder(n_styles, num_layers, mode, input_nc, progressive)
        else:
            # ~200M parameters: skip their random init, the strict by-name load below overwrites every
            # parameter and buffer (or raises, and the half-built module is never returned).
            with torch.device("meta"):
                self.encoder = GradualStyleEncoder(n_styles, num_layers, mode, input_nc, progressive)
            self.encoder.to_empty(device="cpu")
        self.register_buffer("latent_avg", None)
        self.opts: dict[str, Any] = {}
        if ckpt is not None:
            self._load_checkpoint(ckpt)
        elif backbone_checkpoint is not None:
            self.load_backbone(backbone_checkpoint)
        if add_latent_avg is None:
            add_latent_avg = ckpt is not None and ckpt.start_from_latent_avg
        if add_latent_avg and self.latent_avg is None:
            raise WeightsError(
                "add_latent_avg=True but no latent_avg was loaded (no checkpoint, or the checkpoint has none)"
            )
        self.add_latent_avg = bool(add_latent_avg)
        if frozen:
            self.requires_grad_(False)
            self.eval()

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], output_size: int | None = 256, **kwargs: Any
    ) -> PSPEncoder:
        """A pSp or e4e checkpoint; ``output_size=None`` takes the size the checkpoint was trained for."""
        return cls(checkpoint=str(path), output_size=output_size, **kwargs)

    def _load_checkpoint(self, ckpt: PSPCheckpoint) -> None:
        state = complete_batchnorm_counters(self.encoder, ckpt.encoder_state)
        load_state_dict_by_name(self.encoder, state, what=f"pSp checkpoint {ckpt.path} (encoder.*)")
        if ckpt.latent_avg is not None:
            self.latent_avg = _latent_avg_rows(ckpt.latent_avg, self.n_styles, f"pSp checkpoint {ckpt.path}")
        self.opts = ckpt.opts

    def load_backbone(self, path: str | os.PathLike[str]) -> None:
        """Initialise ``input_layer``/``body`` from an IR-SE plain state dict (ArcFace's), as pSp does.

        The input layer is skipped when the encoder does not take 3-channel images (pSp: ``label_nc != 0``).
        """
        resolved = _resolve(str(path), ARCFACE_IRSE50.name)
        state = read_treb1en_state_dict(resolved, what="backbone checkpoint")
        prefixes = ("body.",) if self.encoder.input_layer[0].in_channels != 3 else ("input_layer.", "body.")
        wanted = {k: v for k, v in state.items() if k.startswith(prefixes)}
        target = nn.ModuleDict({p.rstrip("."): getattr(self.encoder, p.rstrip(".")) for p in prefixes})
        load_state_dict_by_name(
            target, complete_batchnorm_counters(target, wanted), what=f"backbone checkpoint {resolved}"
        )

    def train(self, mode: bool = True) -> PSPEncoder:
        return super().train(False if self.frozen else mode)

    def forward(self, images: Tensor) -> Tensor:
        images = resize_square(images, self.input_size)
        codes = self.encoder(images)
        if self.add_latent_avg:
            codes = codes + self.latent_avg
        return codes
