"""The layers of rosinality's StyleGAN2, with its parameter and buffer names, on native torch ops.

Equalised-learning-rate linear, fused bias + leaky ReLU, FIR blur and upsampling, the modulated conv and the
blocks built from it. Only the CUDA ops of rosinality's code are replaced (by ``ifadit.nets.ops``), so the
same modules run on the CPU and on any GPU; the discriminator reuses several of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifadit.nets.ops import fused_leaky_relu, make_fir_kernel, upfirdn2d


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

