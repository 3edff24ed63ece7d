"""Real photos that ship offline: scikit-image's astronaut, matplotlib's Grace Hopper, and a 2 x 2 tiling of
them with four faces."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image
from skimage import data

RECIPE = Path(__file__).resolve().parents[2] / "tests" / "conf" / "photo_flow.yaml"  # the tiny photo model


def astronaut() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut())


def grace_hopper() -> np.ndarray:
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def tiled() -> np.ndarray:
    """Four faces: astronaut and Grace Hopper, each also mirrored, in a 2 x 2 grid (1024 x 1024)."""
    top = np.concatenate([astronaut(), astronaut()[:, ::-1]], axis=1)
    grace = grace_hopper()[:512]
    bottom = np.concatenate([grace, grace[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, bottom], axis=0))
