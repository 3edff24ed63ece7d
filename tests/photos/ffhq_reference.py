"""FFHQ's alignment written out independently of ifadit, as the tests' reference: the quad of the FFHQ dataset
script's ``recreate_aligned_images`` from 5 landmarks, where that crop puts image points, and the crop itself
made with the same PIL calls (a QUAD transform at 4x the output size, then a Lanczos reduction)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def ffhq_reference_quad(lm: np.ndarray) -> np.ndarray:
    """The quad (top-left, bottom-left, bottom-right, top-right) for landmarks (5, 2): eyes, nose, mouth."""
    eye_avg = (lm[0] + lm[1]) * 0.5
    eye_to_eye = lm[1] - lm[0]
    eye_to_mouth = (lm[3] + lm[4]) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x = x / np.hypot(*x)
    x = x * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_reference_points(lm: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """Where FFHQ's crop at ``size`` px puts image ``points`` (N, 2), in crop pixel-centre coordinates."""
    quad = ffhq_reference_quad(lm)
    origin, x_axis, y_axis = quad[0], quad[3] - quad[0], quad[1] - quad[0]
    rel = points - origin
    u = rel @ x_axis / (x_axis @ x_axis)
    v = rel @ y_axis / (y_axis @ y_axis)
    return np.stack([u, v], axis=-1) * size - 0.5


def ffhq_reference_crop(pixels: np.ndarray, lm: np.ndarray, size: int) -> np.ndarray:
    """FFHQ's crop of a face whose square lies inside the photo (no shrink or pad needed), uint8 (S, S, 3)."""
    quad = ffhq_reference_quad(lm)
    big = Image.fromarray(pixels).transform(
        (4 * size, 4 * size), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR
    )
    return np.asarray(big.resize((size, size), Image.LANCZOS))
