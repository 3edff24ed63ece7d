"""Image metrics against hand-computed values: PSNR, SSIM, injected distances (LPIPS's slot), pixel
diversity, and FID with a small feature extractor against scipy's matrix square root."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ifadit.metrics import (
    MeanDistance,
    PairwiseDistance,
    default_lpips,
    lpips_weights_present,
    pixel_l1,
    psnr_metric,
    ssim_metric,
)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [-1, 1] images, by hand: -10 log10 of the mean squared error on [0, 1]."""
    return -10 * torch.log10(((a - b) / 2).pow(2).flatten(1).mean(dim=1))


def test_psnr_is_the_mean_of_per_image_psnrs() -> None:
    target = torch.zeros(2, 3, 4, 4)
    preds = torch.stack([torch.full((3, 4, 4), 0.2), torch.full((3, 4, 4), 0.02)])
    metric = psnr_metric()
    metric.update(preds, target)
    # MSE on [-1, 1] images 0.04 and 0.0004 with data range 2: 10 log10(4 / mse) = 20 and 40 dB
    assert metric.compute().item() == pytest.approx(30.0, abs=1e-4)
    assert metric.compute().item() == pytest.approx(_psnr(preds, target).mean().item(), abs=1e-4)
    half = psnr_metric()
    half.update(preds[1:], target[1:])
    first = psnr_metric()
    first.update(preds[:1], target[:1])
    first.merge_state(half)
    assert first.compute().item() == pytest.approx(30.0, abs=1e-4)


def test_ssim_of_constant_images_by_hand() -> None:
    metric = ssim_metric()
    a, b = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), -0.5)
    metric.update(a, b)
    c1 = (0.01 * 2.0) ** 2  # k1 * data range
    expected = (2 * 0.5 * -0.5 + c1) / (0.25 + 0.25 + c1)  # no variance: the contrast term is 1
    assert metric.compute().item() == pytest.approx(expected, abs=1e-5)
    same = ssim_metric()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    same.update(x, x)
    assert same.compute().item() == pytest.approx(1.0, abs=1e-5)


def test_injected_distance_and_pixel_diversity_by_hand() -> None:
    l2 = MeanDistance(lambda a, b: (a - b).flatten(1).norm(dim=1))
    a = torch.zeros(2, 1, 2, 2)
    b = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 0.5)])
    l2.update(a, b)
    assert l2.compute().item() == pytest.approx((2.0 + 1.0) / 2)  # norms of 4 x 1 and 4 x 0.5
    faces = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 0.0, 1.0)])[None]  # (1, K=3, 1, 2, 2)
    diversity = PairwiseDistance()
    diversity.update(faces)
    # pixel differences in [0, 1] units: 0.5, 1.0, 0.5
    assert diversity.compute().item() == pytest.approx(2 / 3)
    torch.testing.assert_close(pixel_l1(a, b), torch.tensor([0.5, 0.25]))
    with pytest.raises(ValueError, match="gave 1 values for 2 image pairs"):
        MeanDistance(lambda a, b: (a - b).sum().reshape(1)).update(a, b)


def test_lpips_is_absent_without_its_weights_and_never_downloads(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert not lpips_weights_present("alex")
    assert default_lpips("alex") is None
    assert list(tmp_path.iterdir()) == []  # nothing fetched
    with pytest.raises(ValueError, match="net_type must be one of"):
        default_lpips("resnet")


class SmallFeatures(nn.Module):
    """A small random feature extractor: 2 x 2 pooled pixels -> 4 features."""

    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 4))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def _fid_by_hand(real: np.ndarray, fake: np.ndarray) -> float:
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_with_an_injected_feature_extractor_matches_the_formula() -> None:
    features = SmallFeatures()
    real, fake = torch.rand(24, 3, 8, 8) * 2 - 1, torch.rand(20, 3, 8, 8) * 1.5 - 0.5
    fid = FrechetInceptionDistance(feature=features)
    fid.update(real[:12], real=True)
    fid.update(real[12:], real=True)
    fid.update(fake, real=False)
    with torch.no_grad():
        expected = _fid_by_hand(features(real).double().numpy(), features(fake).double().numpy())
    assert fid.compute().item() == pytest.approx(expected, rel=1e-3, abs=1e-5)
