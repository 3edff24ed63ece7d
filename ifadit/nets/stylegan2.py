"""StyleGAN2 generator whose parameter and buffer names are those of rosinality's ``stylegan2-pytorch``.

The pretrained generators the method relies on (FFHQ 256 px ``550000.pt``, the converted 1024 px config-f,
the ``decoder.*`` part of pSp/e4e checkpoints) are published in rosinality's layout, so matching its
``state_dict`` key for key lets them load by name with ``strict=True``. Only the CUDA ops are replaced by
native torch (``ifadit.nets.ops``), so the same module runs on the CPU and on any GPU. The layers live in
:mod:`ifadit.nets.stylegan2_layers`, the reading of checkpoint files in
:mod:`ifadit.nets.stylegan2_checkpoints`; their public names are importable from here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ifadit.nets.base import Generator
from ifadit.nets.stylegan2_checkpoints import (
    PRETRAINED_CONFIGS,
    infer_config,
    read_rosinality_checkpoint,
    resolve_checkpoint,
    rosinality_channels,
)
from ifadit.nets.stylegan2_layers import (
    Blur,
    ConstantInput,
    EqualLinear,
    FusedLeakyReLU,
    ModulatedConv2d,
    NoiseInjection,
    PixelNorm,
    StyledConv,
    ToRGB,
    Upsample,
)
from ifadit.weights import WeightsError, load_state_dict_by_name

__all__ = [
    "PRETRAINED_CONFIGS",
    "Blur",
    "ConstantInput",
    "EqualLinear",
    "FusedLeakyReLU",
    "ModulatedConv2d",
    "NoiseInjection",
    "PixelNorm",
    "StyleGAN2Generator",
    "StyledConv",
    "ToRGB",
    "Upsample",
    "infer_config",
    "read_rosinality_checkpoint",
    "resolve_checkpoint",
    "rosinality_channels",
]


class StyleGAN2Generator(Generator):
    """rosinality-compatible StyleGAN2 generator: W+ (B, n_latent, style_dim) -> RGB in [-1, 1].

    ``max_channels`` caps every width of the channel table so a tiny model fits CPU tests; left at
    ``None`` (the default) the architecture is rosinality's ``Generator(size, style_dim, n_mlp,
    channel_multiplier)`` exactly. ``channels`` gives the whole table explicitly (used when the widths
    are read off a checkpoint). ``checkpoint`` is a manifest name or a file path, loaded at construction.

    ``layout_size=s`` (0, the default, is rosinality's model) adds a spatial input: W+ carries ``s * s`` more
    rows after its ``n_latent`` styles, a ``style_dim``-channel s x s map (an attribute encoder's layout
    rows); a zero-initialised 1x1 conv adds it to the activations at resolution s. Trained from scratch, a
    small generator must place every part of the face from styles alone and learns that slowly (blurry
    faces). Measured on the quickstart (``layout_size=8``): the judge's reconstruction score rises from
    0.75 to 0.85, but the layout carries identity too, so a wrong key's recovery, which reads it off the
    anonymized face, keeps more of the original (0.34 against a 0.3 goal). Off in every recipe;
    docs/research.md, "Phase 1", has the numbers.
    """

    def __init__(
        self,
        size: int = 256,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        lr_mlp: float = 0.01,
        max_channels: int | None = None,
        channels: Mapping[int, int] | None = None,
        checkpoint: str | None = None,
        checkpoint_key: str | None = "g_ema",
        layout_size: int = 0,
    ) -> None:
        super().__init__()
        log_size = round(math.log2(size)) if size > 0 else 0
        if size < 8 or 2**log_size != size:
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        self.size = size
        self.style_dim = style_dim
        self.log_size = log_size
        self.num_layers = (log_size - 2) * 2 + 1
        self.n_latent = log_size * 2 - 2
        if channels is None:
            self.channels = rosinality_channels(size, channel_multiplier, max_channels)
        else:
            self.channels = {int(res): int(ch) for res, ch in channels.items()}
            missing = [2**i for i in range(2, log_size + 1) if 2**i not in self.channels]
            if missing:
                raise ValueError(f"channels table lacks resolutions {missing}")

        self.style = nn.Sequential(
            PixelNorm(),
            *(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True) for _ in range(n_mlp)),
        )
        ch4 = self.channels[4]
        self.input = ConstantInput(ch4)
        self.conv1 = StyledConv(ch4, ch4, 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch4, style_dim, upsample=False)

        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty, kept for attribute parity with rosinality
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))
        in_ch = ch4
        for i in range(3, log_size + 1):
            out_ch = self.channels[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch

        if layout_size and (layout_size not in self.channels or layout_size > size):
            raise ValueError(
                f"layout_size must be 0 or a resolution of the generator (4..{size}), got {layout_size}"
            )
        self.layout_size = layout_size
        self.layout_tokens = layout_size * layout_size
        if layout_size:
            self.layout = nn.Conv2d(style_dim, self.channels[layout_size], 1)
            nn.init.zeros_(self.layout.weight)  # starts as rosinality's generator; the layout is learned in
            nn.init.zeros_(self.layout.bias)

        # Not persistent: rosinality keeps latent_avg beside g_ema, never inside its state_dict.
        self.register_buffer("latent_avg", None, persistent=False)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint, key=checkpoint_key)

    # -- mapping and truncation -------------------------------------------------------------------

    def map(self, z: Tensor) -> Tensor:
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> Tensor:
        """Mean of ``map(z)`` over ``n`` random z, shape (1, style_dim)."""
        device = self.input.input.device
        return self.style(_randn((n, self.style_dim), generator, device)).mean(0, keepdim=True)

    def truncate(self, w: Tensor, psi: float, latent_avg: Tensor | None = None) -> Tensor:
        """``avg + psi * (w - avg)``; without a stored ``latent_avg`` one is estimated once and kept."""
        if latent_avg is None:
            if self.latent_avg is None:
                self.latent_avg = self.mean_latent().view(self.style_dim)
            latent_avg = self.latent_avg
        return latent_avg + psi * (w - latent_avg)

    def style_inputs(self) -> list[tuple[int, EqualLinear]]:
        """Every affine style layer with the W+ row it reads, in ``forward``'s order: the only way W+
        reaches the image, so an affine change of a row's codes can be folded into these layers."""
        pairs = [(0, self.conv1.conv.modulation), (1, self.to_rgb1.conv.modulation)]
        for level, to_rgb in enumerate(self.to_rgbs):
            i = 2 * level + 1
            up, conv = self.convs[2 * level], self.convs[2 * level + 1]
            pairs += [(i, up.conv.modulation), (i + 1, conv.conv.modulation), (i + 2, to_rgb.conv.modulation)]
        return pairs

    # -- synthesis ---------------------------------------------------------------------------------

    def make_noise(self, batch: int = 1, generator: torch.Generator | None = None) -> list[Tensor]:
        """Fresh noise maps for every layer, in the layout ``forward(noise=...)`` takes."""
        device = self.input.input.device
        sides = [2 ** ((layer_idx + 5) // 2) for layer_idx in range(self.num_layers)]
        return [_randn((batch, 1, side, side), generator, device) for side in sides]

    def forward(
        self, w_plus: Tensor, noise: Sequence[Tensor | None] | None = None, randomize_noise: bool = False
    ) -> Tensor:
        """Render W+ (B, n_latent, style_dim) or one W per sample (B, style_dim) to RGB in [-1, 1].

        Noise: an explicit per-layer list wins; otherwise the stored ``noises.noise_N`` maps
        (deterministic), or fresh noise with ``randomize_noise=True``.
        """
        if w_plus.ndim == 2 and not self.layout_size:
            w_plus = w_plus.unsqueeze(1).expand(-1, self.n_latent, -1)
        rows = self.n_latent + self.layout_tokens
        if w_plus.ndim != 3 or w_plus.shape[1:] != (rows, self.style_dim):
            if self.layout_size:
                accepted = f" ({self.n_latent} styles + {self.layout_tokens} layout rows)"
            else:
                accepted = f" or W (B, {self.style_dim})"
            raise ValueError(
                f"expected W+ of shape (B, {rows}, {self.style_dim}){accepted}, got {tuple(w_plus.shape)}"
            )
        layout = None
        if self.layout_size:
            grid = w_plus[:, self.n_latent :].transpose(1, 2)
            layout = self.layout(grid.reshape(-1, self.style_dim, self.layout_size, self.layout_size))
        if noise is None:
            if randomize_noise:
                noise = [None] * self.num_layers
            else:
                noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        elif len(noise) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} noise maps, got {len(noise)}")

        def with_layout(activations: Tensor) -> Tensor:
            """The layout joins the first activations at its resolution (the constant input for s = 4)."""
            if layout is None or activations.shape[-1] != self.layout_size:
                return activations
            return activations + layout

        out = self.conv1(with_layout(self.input(w_plus.shape[0])), w_plus[:, 0], noise[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        for level, to_rgb in enumerate(self.to_rgbs):
            i = 2 * level + 1
            out = with_layout(self.convs[2 * level](out, w_plus[:, i], noise[i]))
            out = self.convs[2 * level + 1](out, w_plus[:, i + 1], noise[i + 1])
            skip = to_rgb(out, w_plus[:, i + 2], skip)
        return skip

    # -- checkpoints -------------------------------------------------------------------------------

    def load_checkpoint(self, checkpoint: str | os.PathLike[str], key: str | None = "g_ema") -> None:
        """Load a rosinality container (``{"g_ema": ..., "latent_avg": ...}``) or manifest entry by name."""
        path = resolve_checkpoint(checkpoint)
        state_dict, latent_avg = read_rosinality_checkpoint(path, key)
        load_state_dict_by_name(self, state_dict, what=f"StyleGAN2 checkpoint {path}", strict=True)
        self.set_latent_avg(latent_avg)

    def set_latent_avg(self, latent_avg: Tensor | None) -> None:
        """Keep a published average W (shape (style_dim,) or broadcastable to W+) for truncation."""
        if latent_avg is None:
            self.latent_avg = None
            return
        if latent_avg.shape[-1] != self.style_dim:
            raise WeightsError(
                f"latent_avg has shape {tuple(latent_avg.shape)}, expected last dim {self.style_dim}"
            )
        if latent_avg.numel() == self.style_dim:
            latent_avg = latent_avg.reshape(self.style_dim)
        self.latent_avg = latent_avg.detach().to(device=self.input.input.device, dtype=self.input.input.dtype)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike[str],
        key: str | None = "g_ema",
        **config: Any,
    ) -> StyleGAN2Generator:
        """Build the generator a checkpoint describes and load it; ``config`` overrides what is inferred.

        ``checkpoint`` is a path or a manifest name (then its known config is the default). Size,
        style_dim, n_mlp and the channel table are read off the tensor shapes when not given, so any
        rosinality-layout file (any size or channel multiplier) loads without knowing its settings.
        """
        name = str(checkpoint)
        path = resolve_checkpoint(checkpoint)
        state_dict, latent_avg = read_rosinality_checkpoint(path, key)
        settings: dict[str, Any] = {**infer_config(state_dict), **PRETRAINED_CONFIGS.get(name, {}), **config}
        if name in PRETRAINED_CONFIGS or config.keys() & {"size", "channel_multiplier", "max_channels"}:
            # The caller states the architecture: a file that differs must fail on its shapes.
            settings.pop("channels", None)
        model = cls(**settings)
        load_state_dict_by_name(model, state_dict, what=f"StyleGAN2 checkpoint {path}", strict=True)
        model.set_latent_avg(latent_avg)
        return model


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Normal samples drawn on the generator's own device (reproducible), then moved to ``device``."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)
