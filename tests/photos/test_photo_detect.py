"""MTCNN on real photos: every face found (one, one, four when tiled), large photos searched in tiles at full
resolution with the coordinates in photo pixels, tiny faces reported rather than missed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from photo_samples import astronaut, grace_hopper, tiled

from ifadit.photos.detect import FaceDetector


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def _resize(pixels: np.ndarray, factor: float) -> np.ndarray:
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float()
    size = (round(pixels.shape[0] * factor), round(pixels.shape[1] * factor))
    out = F.interpolate(tensor, size=size, mode="bilinear", antialias=factor < 1, align_corners=False)
    return out.round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy().copy()


def test_every_face_is_found(detector: FaceDetector) -> None:
    astro, grace, grid = (detector.detect(p) for p in (astronaut(), grace_hopper(), tiled()))
    assert len(astro.faces) == 1 and len(grace.faces) == 1
    assert len(grid.faces) == 4 and not grid.tiny
    # one face per quadrant of the 1024 x 1024 tiling
    quadrants = sorted((int(f.box[0] >= 512), int(f.box[1] >= 512)) for f in grid.faces)
    assert quadrants == [(0, 0), (0, 1), (1, 0), (1, 1)]
    face = astro.faces[0]
    assert face.score > 0.99 and len(face.landmarks) == 5
    (lx, ly), (rx, _) = face.landmarks[:2]
    assert face.box[0] < lx < rx < face.box[2] and face.box[1] < ly < face.box[3]


def test_large_photos_are_searched_in_tiles_at_full_resolution() -> None:
    detector = FaceDetector(max_side=384)  # tiles of 384 px: the 1024 px photo needs several per level
    reference = FaceDetector().detect(astronaut()).faces[0]
    big = detector.detect(_resize(astronaut(), 2.0))
    assert big.scale == 1.0 and big.tiles > 4
    assert len(big.faces) == 1 and not big.tiny
    np.testing.assert_allclose(np.array(big.faces[0].landmarks), 2 * np.array(reference.landmarks), atol=8)


def test_tiny_faces_are_reported_not_missed(detector: FaceDetector) -> None:
    small = _resize(astronaut(), 0.2)  # the face is about 18 px wide
    found = detector.detect(small)
    assert not found.faces
    assert len(found.tiny) == 1 and found.tiny[0].size < detector.min_face_size


def test_a_face_cut_in_half_by_the_edge_is_found_through_its_mirror_image(detector: FaceDetector) -> None:
    pixels = astronaut()
    face = detector.detect(pixels).faces[0]
    cut = round((face.box[0] + face.box[2]) / 2)  # through the nose: one eye and one mouth corner remain
    half = np.ascontiguousarray(pixels[:, cut:])
    assert not FaceDetector(edges=False).detect(half).faces  # MTCNN alone misses half a face
    found = detector.detect(half)
    assert len(found.faces) == 1 and not found.unsure
    right_eye = np.array(face.landmarks[1]) - [cut, 0]
    assert np.abs(np.array(found.faces[0].landmarks[1]) - right_eye).max() < 0.15 * face.size
