"""Image-level metrics: PSNR and SSIM (torchmetrics), perceptual distance (LPIPS where its weights exist,
else any injected distance), and pixel / perceptual diversity among K anonymizations of one face.

Images are in [-1, 1] (data range 2). PSNR is the mean of per-image PSNRs, as ``ifadit score`` reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

Distance = Callable[[Tensor, Tensor], Tensor]  # two (B, C, H, W) batches in [-1, 1] -> (B,) distances

DATA_RANGE = 2.0  # images in [-1, 1]


def psnr_metric() -> PeakSignalNoiseRatio:
    """Mean per-image PSNR (dB) of images in [-1, 1]; equal to PSNR on [0, 1] images with range 1."""
    return PeakSignalNoiseRatio(data_range=DATA_RANGE, dim=(1, 2, 3), reduction="elementwise_mean")


def ssim_metric() -> StructuralSimilarityIndexMeasure:
    """Mean per-image SSIM (Gaussian window 11, sigma 1.5) of images in [-1, 1]."""
    return StructuralSimilarityIndexMeasure(data_range=DATA_RANGE)


def pixel_l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute pixel difference per image, in [0, 1] units."""
    return ((a - b).abs() / DATA_RANGE).flatten(1).mean(dim=1)


class MeanDistance(Metric):
    """Mean of a per-image distance between paired images (e.g. LPIPS of recovered vs original)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, distance: Distance, **kwargs) -> None:
        super().__init__(**kwargs)
        self.distance = distance
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, a: Tensor, b: Tensor) -> None:
        if a.shape != b.shape:
            raise ValueError(f"expected two batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        d = self.distance(a, b).reshape(-1)
        if d.shape[0] != a.shape[0]:
            raise ValueError(f"the distance gave {d.shape[0]} values for {a.shape[0]} image pairs")
        self.total += d.double().sum()
        self.count += d.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.count if self.count > 0 else torch.tensor(float("nan"))


class PairwiseDistance(Metric):
    """K images of each face (B, K, C, H, W): mean distance over the K(K-1)/2 pairs per face (high = the
    anonymizations differ). Default distance: mean absolute pixel difference in [0, 1] units."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, distance: Distance | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.distance = distance or pixel_l1
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, images: Tensor) -> None:
        if images.dim() != 5 or images.shape[1] < 2:
            raise ValueError(f"expected images (B, K >= 2, C, H, W), got {tuple(images.shape)}")
        k = images.shape[1]
        for i in range(k):
            for j in range(i + 1, k):
                d = self.distance(images[:, i], images[:, j]).reshape(-1)
                self.total += d.double().sum()
                self.count += d.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.count if self.count > 0 else torch.tensor(float("nan"))


class LPIPSDistance(nn.Module):
    """Per-image LPIPS (torchmetrics' network) as a :data:`Distance` on [-1, 1] images."""

    def __init__(self, net_type: str = "alex") -> None:
        super().__init__()
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.net = LearnedPerceptualImagePatchSimilarity(net_type=net_type).net

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.net(a, b).reshape(-1)


_LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def lpips_weights_present(net_type: str = "alex") -> bool:
    """Whether torchvision's ImageNet backbone LPIPS needs is already in the torch hub cache (torchmetrics
    ships LPIPS's linear layers; the backbone would be downloaded, which ifadit never does)."""
    import torchvision

    weights = getattr(torchvision.models, _LPIPS_BACKBONES[net_type]).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return cached.is_file()


def default_lpips(net_type: str = "alex") -> LPIPSDistance | None:
    """LPIPS when its weights are on disk, else None (reported as "n/a")."""
    if net_type not in _LPIPS_BACKBONES:
        raise ValueError(f"net_type must be one of {sorted(_LPIPS_BACKBONES)}, got {net_type!r}")
    return LPIPSDistance(net_type) if lpips_weights_present(net_type) else None
