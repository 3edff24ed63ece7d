"""The soft-shape painter SynthFaces draws with.

Every shape is an approximate signed distance field evaluated on the whole pixel grid of a chunk of images
at once, turned into an anti-aliased alpha (one pixel ramp) and composited over the canvas: no per-pixel or
per-image Python loops.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


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

