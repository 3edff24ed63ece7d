"""The soft-shape painter SynthFaces draws with, its colour tables and its deterministic pattern.

Every shape is an approximate signed distance field evaluated on the whole pixel grid of a chunk of images
at once, turned into an anti-aliased alpha (one pixel ramp) and composited over the canvas: no per-pixel or
per-image Python loops.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# Colour tables of :func:`palette` (dark to light skin, brown to grey irises, black to grey hair, lips).
SKIN = torch.tensor(
    [[0.33, 0.20, 0.13], [0.55, 0.36, 0.24], [0.78, 0.57, 0.44], [0.96, 0.80, 0.68], [1.00, 0.88, 0.80]]
)
IRIS = torch.tensor(
    [[0.28, 0.15, 0.07], [0.50, 0.36, 0.14], [0.28, 0.52, 0.28], [0.25, 0.48, 0.85], [0.55, 0.62, 0.68]]
)
HAIR = torch.tensor(
    [[0.06, 0.05, 0.05], [0.25, 0.15, 0.08], [0.50, 0.23, 0.10], [0.85, 0.68, 0.36], [0.72, 0.72, 0.74]]
)
LIP = torch.tensor([[0.72, 0.45, 0.42], [0.78, 0.30, 0.32], [0.70, 0.12, 0.18]])
OUTLINE = torch.tensor([0.18, 0.10, 0.08])


def pattern(seed: Tensor, count: int, salt: float) -> Tensor:
    """(B,) pattern seeds in [0, 1) → (B, count) deterministic pseudo-random numbers in [0, 1).

    A sine hash (as in shaders), in float64 so that every platform gets the same freckle positions.
    """
    k = torch.arange(count, dtype=torch.float64)
    phase = seed.double()[:, None] * 97.31 + k * 7.123 + salt
    return torch.frac(torch.sin(phase * 12.9898).abs() * 43758.5453).float()


def palette(position: Tensor, table: Tensor) -> Tensor:
    """Piecewise-linear colour lookup: (B,) positions in [0, 1] → (B, 3)."""
    scaled = position.clamp(0, 1) * (len(table) - 1)
    lower = scaled.floor().long().clamp(max=len(table) - 2)
    frac = (scaled - lower)[:, None]
    return table[lower] * (1 - frac) + table[lower + 1] * frac


def col(values: Tensor) -> Tensor:
    """(B,) → (B, 1, 1), to broadcast a per-image scalar over the pixel grid."""
    return values[:, None, None]


class Painter:
    """Composites anti-aliased shapes onto a (B, 3, H, W) canvas.

    Shape parameters are (B,) tensors in face units; distances come back in pixels, so the coverage of a
    shape is a one-pixel ramp at any image size.
    """

    def __init__(self, x: Tensor, y: Tensor, pixel: Tensor, canvas: Tensor) -> None:
        self.inv_pixel = 1.0 / pixel
        self.xp, self.yp = x * col(self.inv_pixel), y * col(self.inv_pixel)
        self.canvas = canvas

    def crop(self, rows: slice, cols: slice) -> Painter:
        """The same painter on a window of the canvas (views: painting there paints the full canvas)."""
        window = object.__new__(Painter)
        window.inv_pixel = self.inv_pixel
        window.xp, window.yp = self.xp[:, rows, cols], self.yp[:, rows, cols]
        window.canvas = self.canvas[:, :, rows, cols]
        return window

    @staticmethod
    def alpha(distance: Tensor) -> Tensor:
        return (0.5 - distance).clamp_(0.0, 1.0)

    def paint(self, alpha: Tensor, colour: Tensor) -> None:
        """Over-composite ``colour`` (B, 3) with coverage ``alpha`` (B, H, W)."""
        self.canvas.lerp_(colour[:, :, None, None], alpha[:, None])

    def ellipse(self, cx: Tensor, cy: Tensor, rx: Tensor, ry: Tensor, grow: float | Tensor = 0.0) -> Tensor:
        """Approximate signed distance to an axis-aligned ellipse (exact for circles)."""
        s = self.inv_pixel
        rx, ry = (rx + grow).clamp(min=1e-3), (ry + grow).clamp(min=1e-3)
        inv_rx, inv_ry = col(1.0 / (rx * s)), col(1.0 / (ry * s))
        px = (self.xp - col(cx * s)) * inv_rx
        py = (self.yp - col(cy * s)) * inv_ry
        px, py = px * px, py * py
        k0_sq = px + py
        k1_sq = torch.addcmul(px * (inv_rx * inv_rx), py, inv_ry * inv_ry)
        # (k0 - 1) * k0 / k1, with the 0/0 at the centre replaced by a sane radius.
        return (k0_sq.sqrt() - 1) * ((k0_sq + 1e-6) / (k1_sq + 1e-6 * inv_rx * inv_ry)).sqrt_()

    def curve(
        self,
        cx: Tensor,
        cy: Tensor,
        half_length: Tensor,
        bend: Tensor,
        slope: Tensor | float,
        half_thickness: Tensor,
        taper: float | Tensor = 0.6,
    ) -> Tensor:
        """Signed distance to a thick stroke along y = cy + slope·dx + bend·(dx/L)², tapered at its ends."""
        s = self.inv_pixel
        length = col(half_length * s)
        dx = self.xp - col(cx * s)
        t = dx / length
        t_sq = t * t
        slope = col(torch.as_tensor(slope).expand_as(cx))
        centre = torch.addcmul(col(cy * s) + slope * dx, col(bend * s), t_sq)
        gradient = slope + (2 * col(bend * s) / length) * t
        across = (self.yp - centre).abs_() * torch.rsqrt(1 + gradient * gradient)
        thickness = col(half_thickness * s) * (1 - taper * t_sq)
        return torch.maximum(across - thickness, dx.abs_() - length)

    def rounded_box(
        self, cx: Tensor, top: Tensor, bottom: Tensor, half_width: Tensor, radius: Tensor
    ) -> Tensor:
        """Signed distance to a box with rounded corners (vertical extent top..bottom)."""
        s = self.inv_pixel
        r = col(radius * s)
        qx = (self.xp - col(cx * s)).abs_() - col(half_width * s) + r
        qy = (self.yp - col((top + bottom) * 0.5 * s)).abs_() - col((bottom - top) * 0.5 * s) + r
        outside = torch.hypot(qx.clamp(min=0), qy.clamp(min=0))
        return outside + torch.maximum(qx, qy).clamp_(max=0) - r


def feature_window(corners_x: Tensor, corners_y: Tensor, to_canvas: Any, size: int) -> tuple[slice, slice]:
    """Pixel rows/cols covering face-frame boxes (B, 4 corners) of every image in the chunk."""
    cx, cy = to_canvas(corners_x, corners_y)
    to_px = size / 2.0
    col_lo = int(((cx.min() + 1) * to_px).floor()) - 2
    col_hi = int(((cx.max() + 1) * to_px).ceil()) + 2
    row_lo = int(((cy.min() + 1) * to_px).floor()) - 2
    row_hi = int(((cy.max() + 1) * to_px).ceil()) + 2
    return slice(max(row_lo, 0), min(max(row_hi, 1), size)), slice(max(col_lo, 0), min(max(col_hi, 1), size))

