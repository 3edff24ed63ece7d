"""Alignment geometry: FFHQ's quad against an independent transcription of its formulas, the crop against
PIL's QUAD transform (what FFHQ's own script calls), the blurred-edge padding, antialiasing of large faces,
the crop -> paste-back round trip and the paste mask's support."""

from __future__ import annotations

import math

import kornia
import numpy as np
import pytest
import torch
from ffhq_reference import ffhq_reference_crop, ffhq_reference_points, ffhq_reference_quad

from ifadit.photos.align import (
    alignment_matrices,
    apply_affine,
    crop_corners,
    crop_faces,
    ellipse_masks,
    ffhq_quads,
    paste_faces,
)
from ifadit.photos.blend import mask_kernels, soften_masks

# MTCNN's landmarks of the astronaut (skimage.data.astronaut), rounded: eyes, nose, mouth corners
ASTRONAUT = np.array(
    [[204.65, 101.22], [248.19, 103.33], [226.42, 129.13], [202.46, 139.79], [246.53, 142.02]]
)


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 127.5 - 1


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def test_quad_and_matrix_follow_ffhq() -> None:
    gen = np.random.default_rng(0)
    landmarks = ASTRONAUT[None] + gen.normal(0, 4, size=(6, 5, 2)) * [[[1, 1]]]
    quads = ffhq_quads(torch.tensor(landmarks)).numpy()
    for lm, quad in zip(landmarks, quads, strict=True):
        np.testing.assert_allclose(quad, ffhq_reference_quad(lm), atol=1e-9)
    matrices = alignment_matrices(torch.tensor(landmarks, dtype=torch.float32), 256)
    corners = apply_affine(matrices.double(), torch.tensor(quads))
    torch.testing.assert_close(corners, crop_corners(256).expand(6, -1, -1), atol=2e-3, rtol=0)
    eyes = apply_affine(matrices.double(), torch.tensor(landmarks[:, :2])).numpy()
    for lm, eye in zip(landmarks, eyes, strict=True):
        np.testing.assert_allclose(eye, ffhq_reference_points(lm, lm[:2], 256), atol=1e-2)


def test_crop_matches_ffhq_pil_calls() -> None:
    """FFHQ warps with ``img.transform(..., Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)`` at 4x the
    output size and reduces with Lanczos; a face whose square lies inside the photo needs no shrink or pad, so
    the crops must agree within about a grey level."""
    from skimage import data

    pixels = np.ascontiguousarray(data.astronaut())
    reference = ffhq_reference_crop(pixels, ASTRONAUT, 256).astype(int)
    matrices = alignment_matrices(torch.tensor(ASTRONAUT[None], dtype=torch.float32), 256)
    ours = _to_uint8(crop_faces(_to_tensor(pixels), matrices, 256)[0]).astype(int)
    difference = np.abs(ours - reference)
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 4


def _face_at(center: tuple[float, float], eye_dist: float, angle: float = 0.0) -> torch.Tensor:
    """Landmarks of an upright (then turned) face with eyes ``eye_dist`` apart around ``center``."""
    base = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.45], [-0.4, 0.9], [0.4, 0.9]]) * eye_dist
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return torch.tensor(base @ rot.T + np.array(center), dtype=torch.float32).unsqueeze(0)


def test_edge_faces_get_a_blurred_edge_not_a_mirror_image() -> None:
    """A face at the photo's left edge: the part of the square outside the photo is the edge smeared, blurred
    and faded to the photo's median colour at the far side, never the photo mirrored into it."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 20, 30, generator=gen) * 2 - 1  # texture a reflection would copy
    photo = torch.nn.functional.interpolate(coarse, size=(200, 300), mode="bilinear", align_corners=True)[0]
    landmarks = _face_at((20.0, 100.0), 40.0)
    matrices = alignment_matrices(landmarks, 64)
    crop = crop_faces(photo, matrices, 64)[0]
    inside_from = math.ceil(apply_affine(matrices, torch.tensor([[[0.0, 100.0]]]))[0, 0, 0].item()) + 2
    outside = crop[:, :, : inside_from - 4]
    median = photo.flatten(1).median(dim=1).values.view(3, 1)
    # faded towards the median colour: the crop's far column is nearer it than the photo's edge column
    assert (crop[:, :, 0] - median).abs().mean() < 0.5 * (photo[:, :, 0] - median).abs().mean()
    reflected = kornia.geometry.transform.warp_affine(  # what reflection padding would have shown there
        photo.unsqueeze(0), matrices, (64, 64), padding_mode="reflection", align_corners=True
    )[0][:, :, : inside_from - 4]

    def across(image: torch.Tensor) -> float:  # mean change from column to column
        return (image[..., 1:] - image[..., :-1]).abs().mean().item()

    assert across(outside) < 0.3 * across(reflected)


def test_a_large_face_is_shrunk_with_an_antialiasing_filter() -> None:
    """A fine checkerboard on a face 8x the crop: bilinear sampling alone would alias it into strong
    patterns; the shrunk face region gives the mean grey."""
    ys, xs = torch.meshgrid(torch.arange(1200), torch.arange(1200), indexing="ij")
    photo = (((xs + ys) % 2).float() * 2 - 1).expand(3, -1, -1)
    crop = crop_faces(photo, alignment_matrices(_face_at((600.0, 560.0), 128.0, 0.3), 64), 64)[0]
    assert crop[:, 8:-8, 8:-8].abs().max() < 0.1


def test_crop_then_paste_back_returns_the_photo_and_nothing_outside_the_mask_moves() -> None:
    y, x = torch.meshgrid(torch.linspace(0, 1, 300), torch.linspace(0, 1, 400), indexing="ij")
    photo = torch.stack([torch.sin(6 * x), torch.cos(5 * y), torch.sin(3 * (x + y))]) * 0.8
    landmarks = _face_at((200.0, 140.0), 30.0, math.radians(10))
    matrices = alignment_matrices(landmarks, 64)
    crops = crop_faces(photo, matrices, 64)
    masks = soften_masks(ellipse_masks(apply_affine(matrices, landmarks), 64))
    pasted, union = paste_faces(photo, crops, masks, matrices)
    inside = union[0] > 0.99
    assert inside.sum() > 1000
    # resampled twice (down by ~1.9x, then back up): smooth content survives within a few percent
    assert (pasted - photo).abs()[:, inside].max() < 0.06
    outside = union[0] == 0
    assert torch.equal(pasted[:, outside], photo[:, outside])
    assert outside.sum() > 0.8 * outside.numel()


def test_paste_mask_is_the_face_eroded_and_blurred_and_zero_at_the_crop_border() -> None:
    size = 256
    landmarks = apply_affine(
        alignment_matrices(torch.tensor(ASTRONAUT[None], dtype=torch.float32), size),
        torch.tensor(ASTRONAUT[None], dtype=torch.float32),
    )
    face = ellipse_masks(landmarks, size)
    assert set(face.unique().tolist()) == {0.0, 1.0}
    assert mask_kernels(256) == (5, 15, pytest.approx(2.6))
    soft = soften_masks(face)
    assert soft.min() >= 0 and soft.max() <= 1
    nose = landmarks[0, 2].round().long()
    assert soft[0, 0, nose[1], nose[0]] == 1
    assert soft.sum() < face.sum()  # the erosion takes more than the blur gives back
    assert ((soft > 0) & (soft < 1)).sum() > 0.02 * face.sum()  # a soft seam, not a hard edge
    border = torch.cat([soft[0, 0, 0], soft[0, 0, -1], soft[0, 0, :, 0], soft[0, 0, :, -1]])
    assert torch.all(border == 0)
    full = soften_masks(torch.ones(1, 1, 64, 64))  # a parser mask reaching the crop's edge still fades to 0
    assert torch.all(full[0, 0, 0] == 0) and full[0, 0, 32, 32] == 1
