"""StyleGAN2's residual discriminator, parameter and buffer names those of rosinality's ``stylegan2-pytorch``.

The task's optional adversarial loss needs a realism critic. rosinality's training checkpoints (the FFHQ
256 px ``550000.pt`` the generator comes from) carry the matching discriminator under ``"d"``, so keeping
its layout key for key lets a user who fine-tunes that generator start the critic from it too. The
quickstart trains a small one from scratch with the same class.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifadit.nets.base import Discriminator
from ifadit.nets.stylegan2 import (
    Blur,
    EqualLinear,
    FusedLeakyReLU,
    read_rosinality_checkpoint,
    resolve_checkpoint,
    rosinality_channels,
)
from ifadit.weights import WeightsError, load_state_dict_by_name

BLUR_TAPS = (1, 3, 3, 1)


class EqualConv2d(nn.Module):
    """Conv with equalised learning rate (weights N(0, 1), scaled by 1/sqrt(fan-in) at run time)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [bias + leaky ReLU]; indices 0, 1, 2 as in the published checkpoints."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False,
        activate: bool = True, bias: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        if downsample:
            # low-pass before the stride-2 conv (anti-aliasing); pads chosen so the output is exactly half
            extra = len(BLUR_TAPS) - 2 + kernel_size - 1
            layers.append(Blur(BLUR_TAPS, pad=((extra + 1) // 2, extra // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(
            EqualConv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias and not activate)
        )
        if activate:
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second halves the resolution) plus a 1x1 downsampled skip, variance kept."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class StyleGAN2Discriminator(Discriminator):
    """rosinality's ``Discriminator(size, channel_multiplier)``; ``channels``/``max_channels`` shrink it.

    One difference: the minibatch-stddev group is the largest divisor of the batch up to ``stddev_group``,
    so a last batch of 6 works (rosinality's view fails on batches the group does not divide)."""

    def __init__(
        self,
        size: int = 256,
        channel_multiplier: int = 2,
        channels: Mapping[int, int] | None = None,
        max_channels: int | None = None,
        stddev_group: int = 4,
        checkpoint: str | None = None,
        checkpoint_key: str | None = "d",
    ) -> None:
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        table = {int(k): int(v) for k, v in channels.items()} if channels is not None else None
        if table is None:
            table = rosinality_channels(size, channel_multiplier, max_channels)
        missing = [res for res in _levels(size) if res not in table]
        if missing:
            raise ValueError(f"channels needs a width for each resolution {_levels(size)}, missing {missing}")
        self.size = size
        self.stddev_group = stddev_group
        convs: list[nn.Module] = [ConvLayer(3, table[size], 1)]
        for res in _levels(size)[:-1]:
            convs.append(ResBlock(table[res], table[res // 2]))
        self.convs = nn.Sequential(*convs)
        self.final_conv = ConvLayer(table[4] + 1, table[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(table[4] * 16, table[4], activate=True), EqualLinear(table[4], 1)
        )
        if checkpoint is not None:  # a recipe's ``checkpoint: stylegan2-ffhq-256`` (manifest name or path)
            self.load_checkpoint(checkpoint, key=checkpoint_key)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != (self.size, self.size):
            raise ValueError(
                f"the discriminator takes {self.size}x{self.size} images, got {tuple(images.shape[-2:])}"
            )
        features = self.convs(images)
        features = torch.cat((features, self._minibatch_stddev(features)), dim=1)
        return self.final_linear(self.final_conv(features).flatten(1))

    def _minibatch_stddev(self, features: Tensor) -> Tensor:
        """One extra channel: the feature spread within a group of images. A generator that renders the
        same face for everything gets caught by it (mode collapse)."""
        batch, _, height, width = features.shape
        group = max(g for g in range(1, min(batch, self.stddev_group) + 1) if batch % g == 0)
        grouped = features.reshape(group, batch // group, *features.shape[1:])
        spread = (grouped.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
        return spread.repeat(group).view(batch, 1, 1, 1).expand(batch, 1, height, width)

    # -- checkpoints -------------------------------------------------------------------------------

    def load_checkpoint(self, checkpoint: str | os.PathLike[str], key: str | None = "d") -> None:
        """Load the ``d`` of a rosinality training checkpoint (path or manifest name) into this model."""
        path = resolve_checkpoint(checkpoint)
        state_dict, _ = read_rosinality_checkpoint(path, key)
        load_state_dict_by_name(self, state_dict, what=f"StyleGAN2 discriminator checkpoint {path}")

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike[str], key: str | None = "d", **config: Any
    ) -> StyleGAN2Discriminator:
        """The discriminator of a rosinality training checkpoint (``"d"``), a manifest name or a bare state
        dict (``key=None``); size and channels are read off the shapes unless given."""
        path = resolve_checkpoint(checkpoint)
        state_dict, _ = read_rosinality_checkpoint(path, key)
        model = cls(**{**infer_discriminator_config(state_dict), **config})
        load_state_dict_by_name(model, state_dict, what=f"StyleGAN2 discriminator checkpoint {path}")
        return model


def _levels(size: int) -> list[int]:
    """The resolutions from ``size`` down to 4."""
    return [2**i for i in range(int(math.log2(size)), 1, -1)]


def infer_discriminator_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """size and channel table of a rosinality discriminator state dict, read off its shapes."""
    try:
        blocks = sorted(
            int(m.group(1)) for k in state_dict if (m := re.fullmatch(r"convs\.(\d+)\.conv1\.0\.weight", k))
        )
        size = 2 ** (len(blocks) + 2)
        channels = {size: int(state_dict["convs.0.0.weight"].shape[0])}
        for index, res in zip(blocks, _levels(size)[1:], strict=True):
            channels[res] = int(state_dict[f"convs.{index}.conv2.1.weight"].shape[0])
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"not a rosinality StyleGAN2 discriminator state dict ({exc})") from None
    return {"size": size, "channels": channels}

