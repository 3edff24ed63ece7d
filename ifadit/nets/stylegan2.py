"""StyleGAN2 generator whose parameter and buffer names are those of rosinality's ``stylegan2-pytorch``.

The pretrained generators the method relies on (FFHQ 256 px ``550000.pt``, the converted 1024 px config-f,
the ``decoder.*`` part of pSp/e4e checkpoints) are published in rosinality's layout, so matching its
``state_dict`` key for key lets them load by name with ``strict=True``. Only the CUDA ops are replaced by
native torch (``ifadit.nets.ops``), so the same module runs on the CPU and on any GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifadit.nets.base import Generator
from ifadit.nets.ops import fused_leaky_relu, make_fir_kernel, upfirdn2d
from ifadit.weights import (
    MANIFEST,
    WeightsError,
    WeightSpec,
    load_checkpoint,
    load_state_dict_by_name,
    register_weights,
    resolve,
)

_ROSINALITY = "https://github.com/rosinality/stylegan2-pytorch"

register_weights(
    WeightSpec(
        name="stylegan2-ffhq-256",
        filename="stylegan2-ffhq-256.pt",
        layout="rosinality",
        source=(
            f"{_ROSINALITY} README, 'Pretrained Checkpoints' (FFHQ 256 px, 550k iterations, file 550000.pt; "
            "rename it) — the generator iFADIT and RiDDLE use"
        ),
        sha256=None,
        description="rosinality StyleGAN2 FFHQ 256 px, Generator(256, 512, 8, channel_multiplier=2)",
    )
)
register_weights(
    WeightSpec(
        name="stylegan2-ffhq-config-f",
        filename="stylegan2-ffhq-config-f.pt",
        layout="rosinality",
        source=(
            f"NVlabs stylegan2-ffhq-config-f.pkl converted with {_ROSINALITY} convert_weight.py "
            "(the file pSp/e4e also distribute)"
        ),
        sha256=None,
        description="StyleGAN2 FFHQ 1024 px config-f, Generator(1024, 512, 8, channel_multiplier=2)",
    )
)

# Constructor settings of the manifest entries (rosinality's Generator(size, 512, 8, cm)).
PRETRAINED_CONFIGS: dict[str, dict[str, int]] = {
    "stylegan2-ffhq-256": {"size": 256, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2},
    "stylegan2-ffhq-config-f": {"size": 1024, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2},
}


def rosinality_channels(
    size: int, channel_multiplier: int = 2, max_channels: int | None = None
) -> dict[int, int]:
    """Feature width per resolution: 512 up to 32 px, then ``2**(14 - log2 res) * channel_multiplier``."""
    table = {4: 512, 8: 512, 16: 512, 32: 512}
    for res in (64, 128, 256, 512, 1024):
        table[res] = (16384 // res) * channel_multiplier
    table = {res: ch for res, ch in table.items() if res <= size}
    if max_channels is not None:
        table = {res: min(ch, max_channels) for res, ch in table.items()}
    return table


class PixelNorm(nn.Module):
    """Normalise each z to unit RMS before the mapping MLP."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights stored N(0,1)/lr_mul and scaled at run time."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class FusedLeakyReLU(nn.Module):
    """Per-channel bias, leaky ReLU 0.2, gain sqrt(2) (rosinality's ``activate.bias``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    """FIR low-pass after the transposed conv; the kernel is a buffer because checkpoints carry it."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the RGB skip branch."""

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        kernel = make_fir_kernel(taps) * factor**2
        self.register_buffer("kernel", kernel)
        p = kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated (and optionally demodulated) conv.

    Computed in StyleGAN2's "non-fused" form: scale the input channels by the style, run one ordinary conv
    with the shared weight, scale the output channels by the demodulation factors. That is the same
    function as modulating a per-sample weight and running one grouped conv over the batch (the form of
    rosinality's code, with the same parameters), and on the CPU 1.4x faster for a training step of the
    quickstart generator (benchmarks/training_speed.py): per-sample grouped convs keep oneDNN from batching.
    Upsampling is a stride-2 transposed conv followed by the FIR blur, as in StyleGAN2; checkpoints
    converted from TF store that weight already flipped for this form.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        batch = x.shape[0]
        style = self.modulation(w)  # (B, in)
        weight = self.scale * self.weight[0]  # (out, in, k, k), shared by the batch
        x = x * style.view(batch, -1, 1, 1)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=0)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # 1 / |per-sample weight| over (in, k, k): sum_i style_i^2 * sum_k weight_oik^2
            energy = style.square() @ weight.square().sum(dim=(2, 3)).t()  # (B, out)
            out = out * torch.rsqrt(energy + 1e-8).view(batch, -1, 1, 1)
        return self.blur(out) if self.upsample else out


class NoiseInjection(nn.Module):
    """Adds per-pixel noise (shared over channels) scaled by a learned strength."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, x.shape[2], x.shape[3]).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 starting map."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated conv, noise, bias + leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation), added to the upsampled RGB of the previous level."""

    def __init__(
        self,
        in_channels: int,
        style_dim: int,
        upsample: bool = True,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


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
    anonymized face, keeps more of the original (0.34 against a 0.3 goal). Off in every recipe; README
    "Training" has the numbers.
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


def resolve_checkpoint(checkpoint: str | os.PathLike[str]) -> Path:
    """A manifest name (``stylegan2-ffhq-256``) or a path, as the file to read; shared with the
    discriminator, which reads the same rosinality files."""
    name = str(checkpoint)
    if name in MANIFEST:
        return resolve(name)
    return resolve(name, path=checkpoint)


def read_rosinality_checkpoint(
    path: str | os.PathLike[str], key: str | None = "g_ema"
) -> tuple[dict[str, Tensor], Tensor | None]:
    """The generator state dict under ``key`` (``None``: the file is a bare state dict) and ``latent_avg``.

    Training checkpoints also pickle their ``argparse.Namespace`` as ``args``; that one class is
    allowed so ``weights_only=True`` still loads them.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = load_checkpoint(path, weights_only=True)
    if not isinstance(ckpt, Mapping):
        raise WeightsError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if key is None:
        return dict(ckpt), None
    if key not in ckpt:
        raise WeightsError(
            f"{path}: no {key!r} entry in the checkpoint (top-level keys: {sorted(map(str, ckpt))[:10]}) "
            "— is it a rosinality StyleGAN2 checkpoint? Pass key=None for a bare state dict."
        )
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, Tensor):
        raise WeightsError(f"{path}: 'latent_avg' is a {type(latent_avg).__name__}, expected a tensor")
    return dict(ckpt[key]), latent_avg


def infer_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """size, style_dim, n_mlp and the channel table of a rosinality generator, read off its shapes."""
    try:
        style_dim = int(state_dict["conv1.conv.modulation.weight"].shape[1])
        n_levels = sum(1 for k in state_dict if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
        n_mlp = sum(1 for k in state_dict if re.fullmatch(r"style\.\d+\.weight", k))
        channels = {4: int(state_dict["input.input"].shape[1])}
        for level in range(n_levels):
            channels[2 ** (level + 3)] = int(state_dict[f"convs.{2 * level}.conv.weight"].shape[1])
    except KeyError as exc:
        raise WeightsError(
            f"not a rosinality StyleGAN2 generator state dict: key {exc.args[0]!r} is missing"
        ) from None
    return {"size": 2 ** (n_levels + 2), "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}
