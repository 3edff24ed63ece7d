"""Sample grids a person can read: one face per row, one variant per column, each column labelled."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def grid_to_uint8(grid: Tensor) -> np.ndarray:
    """A (3, H, W) image in [0, 1] as an (H, W, 3) uint8 array, as PNG writers want it."""
    return grid.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


GRID_PADDING = 2  # pixels between the faces of a grid, and around it
LABEL_HEIGHT = 14  # the strip above a labelled grid (Pillow's default bitmap font is about 11 px high)


def labelled_grid(columns: Mapping[str, Tensor], padding: int = GRID_PADDING) -> np.ndarray:
    """One face per row and column, each column's label written above it: (H, W, 3) uint8.

    ``columns``: label -> (N, 3, h, w) images in [-1, 1], all of one shape. A label wider than its column is
    cut at the column's edge, so that it never reads as the next column's."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    labels, images = list(columns), list(columns.values())
    if not images or any(img.shape != images[0].shape for img in images):
        raise ValueError("sample columns must be a non-empty mapping of equally shaped image batches")
    rows = torch.stack([img.detach().float().cpu() for img in images], dim=1).flatten(0, 1)
    grid = make_grid((rows.clamp(-1, 1) + 1) / 2, nrow=len(images), padding=padding)
    body = Image.fromarray(grid_to_uint8(grid))
    canvas = Image.new("RGB", (body.width, body.height + LABEL_HEIGHT), "white")
    canvas.paste(body, (0, LABEL_HEIGHT))
    cell = images[0].shape[-1] + padding
    for i, label in enumerate(labels):
        left = padding + i * cell
        strip = Image.new("RGB", (cell - padding, LABEL_HEIGHT), "white")
        ImageDraw.Draw(strip).text((1, 1), label, fill="black")
        canvas.paste(strip, (left, 0))
    return np.asarray(canvas)


def save_labelled_grid(columns: Mapping[str, Tensor], path: str | Path) -> Path:
    """:func:`labelled_grid` as a PNG file."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labelled_grid(columns)).save(path)
    return path
