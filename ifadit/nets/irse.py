"""IR / IR-SE ResNet backbone in the TreB1eN (InsightFace_Pytorch) module layout.

ArcFace's ``model_ir_se50.pth`` and the bodies of pSp / e4e encoders are stored under exactly these module
names (``input_layer.*``, ``body.N.shortcut_layer.*``, ``body.N.res_layer.*``, ``output_layer.*``), so the
names and the order of every ``nn.Sequential`` here are part of the file format, not a style choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Units per stage; the stage widths are fixed and every stage opens with a stride-2 unit.
UNITS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
STAGE_CHANNELS: tuple[int, int, int, int] = (64, 128, 256, 512)
MODES: tuple[str, ...] = ("ir", "ir_se")
SE_REDUCTION = 16
# The body downsamples 16x, and the embedding head flattens its 512-channel map.
INPUT_SIZES: tuple[int, ...] = (112, 224)


@dataclass(frozen=True)
class UnitSpec:
    in_channels: int
    depth: int
    stride: int


def _check(num_layers: int, mode: str) -> None:
    if num_layers not in UNITS_PER_STAGE:
        raise ValueError(f"num_layers must be one of {sorted(UNITS_PER_STAGE)}, got {num_layers}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def unit_specs(num_layers: int) -> list[UnitSpec]:
    """The body's units in order (the order is what numbers ``body.N``)."""
    _check(num_layers, "ir")
    specs: list[UnitSpec] = []
    in_channels = STAGE_CHANNELS[0]
    for depth, count in zip(STAGE_CHANNELS, UNITS_PER_STAGE[num_layers], strict=True):
        specs.append(UnitSpec(in_channels, depth, 2))
        specs.extend(UnitSpec(depth, depth, 1) for _ in range(count - 1))
        in_channels = depth
    return specs


def stage_ends(num_layers: int) -> tuple[int, int, int, int]:
    """Body index of the last unit of each stage (6, 20, 23 are pSp's taps for IR-50)."""
    _check(num_layers, "ir")
    ends, total = [], -1
    for count in UNITS_PER_STAGE[num_layers]:
        total += count
        ends.append(total)
    return tuple(ends)  # type: ignore[return-value]


class SEModule(nn.Module):
    """Squeeze-and-excitation gate; fc1/fc2 are bias-free 1x1 convs as in the checkpoints."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BottleneckIR(nn.Module):
    """Pre-activation "improved residual" unit; the stride sits on the second 3x3 conv."""

    def __init__(self, in_channels: int, depth: int, stride: int, squeeze_excite: bool) -> None:
        super().__init__()
        if in_channels == depth:
            # A 1x1 max-pool is a parameter-free strided identity.
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if squeeze_excite:
            layers.append(SEModule(depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def make_input_layer(in_channels: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
    )


def make_body(num_layers: int = 50, mode: str = "ir_se") -> nn.Sequential:
    _check(num_layers, mode)
    return nn.Sequential(
        *(BottleneckIR(s.in_channels, s.depth, s.stride, mode == "ir_se") for s in unit_specs(num_layers))
    )


class IRBackbone(nn.Module):
    """TreB1eN's ``Backbone``: face crop (112 or 224 px) -> L2-normalised 512-d embedding.

    ``affine=False`` gives the final BatchNorm1d without weight/bias, the variant pSp's ``IR_50`` helpers
    build; ArcFace IR-SE50 (``model_ir_se50.pth``) has ``affine=True``.
    """

    def __init__(
        self,
        num_layers: int = 50,
        mode: str = "ir_se",
        input_size: int = 112,
        drop_ratio: float = 0.4,
        affine: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        _check(num_layers, mode)
        if input_size not in INPUT_SIZES:
            raise ValueError(f"input_size must be one of {INPUT_SIZES}, got {input_size}")
        self.num_layers, self.mode, self.input_size = num_layers, mode, input_size
        head_side = input_size // 16
        self.input_layer = make_input_layer(in_channels)
        self.body = make_body(num_layers, mode)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(512 * head_side * head_side, 512),
            nn.BatchNorm1d(512, affine=affine),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"IRBackbone({self.input_size}) needs {self.input_size}x{self.input_size} input, "
                f"got {tuple(x.shape[-2:])}"
            )
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


def complete_batchnorm_counters(module: nn.Module, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Add ``num_batches_tracked`` entries a file saved before PyTorch 0.4.1 lacks.

    The counter only matters for momentum-free BN training; torch itself fills it in for old files, but
    a strict by-name check would otherwise report it as missing.
    """
    completed = dict(state_dict)
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in completed:
            completed[key] = torch.zeros_like(value)
    return completed


def strip_data_parallel(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix ``nn.DataParallel`` puts on every key, if (and only if) all have it."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)
