"""Alignment geometry: the similarity fit against an independent SVD (Umeyama) solution, the FFHQ template,
the crop -> paste-back round trip and the paste mask's support."""

from __future__ import annotations

import math

import numpy as np
import torch

from ifadit.photos.align import (
    alignment_matrices,
    apply_affine,
    crop_faces,
    ellipse_masks,
    estimate_similarity,
    ffhq_template,
    paste_faces,
    template_pixels,
)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama (1991), least-squares similarity via SVD, as an oracle written from the paper's formulas."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sing, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sing) @ sign) / s.var(0).sum()
    t = mu_d - scale * rotation @ mu_s
    return np.concatenate([scale * rotation, t[:, None]], axis=1)


def test_similarity_fit_equals_umeyama_and_recovers_an_exact_similarity() -> None:
    gen = np.random.default_rng(0)
    src = gen.uniform(0, 500, size=(3, 5, 2))
    angle, scale, shift = 0.4, 0.37, np.array([12.0, -40.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    exact = src @ rot.T + shift
    fitted = estimate_similarity(torch.tensor(src), torch.tensor(exact)).numpy()
    np.testing.assert_allclose(fitted[0], np.concatenate([rot, shift[:, None]], 1), atol=1e-9)
    noisy = exact + gen.normal(0, 3.0, size=exact.shape)
    fitted = estimate_similarity(torch.tensor(src), torch.tensor(noisy)).numpy()
    for i in range(3):
        np.testing.assert_allclose(fitted[i], _umeyama(src[i], noisy[i]), atol=1e-8)


def test_template_follows_ffhq_crop_rule() -> None:
    t = ffhq_template()
    eye_avg, mouth_avg = (t[0] + t[1]) / 2, (t[3] + t[4]) / 2
    # FFHQ centres the crop at eye_avg + 0.1 * eye_to_mouth; the mean face is upright and symmetric
    center = eye_avg + 0.1 * (mouth_avg - eye_avg)
    torch.testing.assert_close(center, torch.tensor([0.5, 0.5]), atol=2e-3, rtol=0)
    assert t[0, 0] < 0.5 < t[1, 0] and abs(t[0, 1] - t[1, 1]) < 0.01
    assert t[0, 1] < t[2, 1] < t[3, 1]  # eyes above the nose above the mouth
    # the side is 4 eye distances here (2x the eye distance beats 1.8x the eye-to-mouth distance)
    assert abs((t[1, 0] - t[0, 0]).item() - 0.25) < 0.02


def _smooth_photo(height: int, width: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([torch.sin(6 * x), torch.cos(5 * y), torch.sin(3 * (x + y))]) * 0.8


def test_crop_then_paste_back_returns_the_photo_and_nothing_outside_the_mask_moves() -> None:
    photo = _smooth_photo(300, 400)
    # a face 120 px wide, tilted by 10 degrees, around (200, 150)
    template = template_pixels(64)
    angle, scale = math.radians(10), 120 / 64
    rot = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    landmarks = ((template - 32) @ rot.T + torch.tensor([200.0, 150.0])).unsqueeze(0)
    matrices = alignment_matrices(landmarks, 64)
    torch.testing.assert_close(apply_affine(matrices, landmarks), template.unsqueeze(0), atol=1e-3, rtol=0)
    crops = crop_faces(photo, matrices, 64)
    masks = ellipse_masks(apply_affine(matrices, landmarks), 64)
    pasted, union = paste_faces(photo, crops, masks, matrices)
    inside = union[0] > 0.99
    assert inside.sum() > 1500
    # resampled twice (down by ~1.9x, then back up): smooth content survives within a few percent
    assert (pasted - photo).abs()[:, inside].max() < 0.06
    outside = union[0] == 0
    assert torch.equal(pasted[:, outside], photo[:, outside])
    assert outside.sum() > 0.8 * outside.numel()


def test_ellipse_mask_is_one_on_the_face_and_exactly_zero_at_the_crop_border() -> None:
    size = 64
    masks = ellipse_masks(template_pixels(size).unsqueeze(0), size)
    assert masks.shape == (1, 1, size, size)
    assert masks.min() >= 0 and masks.max() <= 1
    nose = template_pixels(size)[2].round().long()
    assert masks[0, 0, nose[1], nose[0]] == 1
    border = torch.cat([masks[0, 0, 0], masks[0, 0, -1], masks[0, 0, :, 0], masks[0, 0, :, -1]])
    assert torch.all(border == 0)
