"""SynthFaces: cartoon faces rendered on the fly, with identity labels and per-image nuisance attributes.

No identity-labelled face set (and no pretrained face weights) can be fetched offline, so the quickstart
trains its recognizer, generator and flow on faces it renders itself. An *identity* is a fixed draw of 30
continuous shape and colour parameters (face outline, eye spacing and size, iris colour, brows, nose,
mouth, skin tone, ears, a mole, facial hair…); every *image* of it adds its own nuisance draw (pose,
expression, gaze, lighting, background, hair, glasses, framing), so identity and appearance differ.

Randomness comes straight from numpy's ``PCG64`` bit generator seeded by a ``SeedSequence`` of
``[seed, stream tag, identity(, …)]``: numpy guarantees the raw output of both to stay the same across
versions (the ``Generator`` distribution methods carry no such promise), and all parameters are derived from
raw 53-bit uniforms here. Image ``j`` of an identity is row ``j`` of that identity's stream, so it does not
change when ``images_per_identity`` grows.

The renderer is a batched soft-shape painter: every shape is an approximate signed distance field evaluated
on the whole pixel grid of a chunk of images at once, turned into an anti-aliased alpha (one pixel ramp)
and composited over the canvas. No per-pixel or per-image Python loops.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

# Bump when the rendering or the parameter mapping changes: cached sets are regenerated.
RENDERER_VERSION = 1

SPLITS = ("train", "val", "test")
_STREAM_IDENTITY = 1
_STREAM_NUISANCE = 2
_STREAM_SPLIT = 3


# ----------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityParams:
    """The fixed look of one identity, in face units (the canvas spans [-1, 1]; values are physical)."""

    face_width: float  # half-width of the head
    face_height: float  # half-height of the head
    jaw_taper: float  # how much the lower face narrows towards the chin
    skin_tone: float  # 0 dark … 1 light
    skin_warmth: float  # -1 pink … 1 yellow
    eye_spacing: float  # eye centre as a fraction of the half-width
    eye_height: float  # eye line, fraction of the half-height (negative = above centre)
    eye_size: float  # horizontal eye radius
    eye_aspect: float  # vertical / horizontal eye radius
    iris_colour: float  # position on a brown-hazel-green-blue-grey palette
    brow_thickness: float
    brow_slope: float  # inner end lower (+) or higher (-)
    brow_arch: float
    brow_gap: float  # brow above the eye centre
    brow_length: float  # half-length
    brow_darkness: float
    nose_length: float  # eye line to nose tip
    nose_width: float  # half-width of the tip
    mouth_width: float  # half-width
    lip_thickness: float
    mouth_gap: float  # nose tip to mouth
    lip_redness: float
    ear_size: float
    ear_height: float
    chin_length: float  # extra drop of the chin
    cheek_blush: float
    facial_hair: float  # < 0.6 none, then a moustache, above 0.8 also a beard
    mole_present: float  # > 0.5: a mole is drawn
    mole_u: float  # position on the face, fractions of the half-width / half-height
    mole_v: float

    @classmethod
    def sample(cls, seed: int, index: int) -> IdentityParams:
        """The parameters of identity ``index`` under ``seed`` (stable across numpy versions)."""
        return cls(*identity_param_array(seed, [index])[0].tolist())

    def as_array(self) -> np.ndarray:
        return np.asarray(astuple(self), dtype=np.float64)


# (low, high) of each identity field; a raw uniform u maps to low + u * (high - low).
_IDENTITY_RANGES: dict[str, tuple[float, float]] = {
    "face_width": (0.42, 0.60),
    "face_height": (0.56, 0.72),
    "jaw_taper": (0.15, 0.55),
    "skin_tone": (0.0, 1.0),
    "skin_warmth": (-1.0, 1.0),
    "eye_spacing": (0.28, 0.48),
    "eye_height": (-0.16, 0.02),
    "eye_size": (0.07, 0.125),
    "eye_aspect": (0.45, 0.78),
    "iris_colour": (0.0, 1.0),
    "brow_thickness": (0.015, 0.06),
    "brow_slope": (-0.35, 0.35),
    "brow_arch": (0.0, 0.06),
    "brow_gap": (0.075, 0.16),
    "brow_length": (0.085, 0.15),
    "brow_darkness": (0.0, 1.0),
    "nose_length": (0.16, 0.30),
    "nose_width": (0.04, 0.11),
    "mouth_width": (0.11, 0.25),
    "lip_thickness": (0.01, 0.04),
    "mouth_gap": (0.09, 0.17),
    "lip_redness": (0.0, 1.0),
    "ear_size": (0.10, 0.17),
    "ear_height": (-0.12, 0.08),
    "chin_length": (0.0, 0.10),
    "cheek_blush": (0.0, 1.0),
    "facial_hair": (0.0, 1.0),
    "mole_present": (0.0, 1.0),
    "mole_u": (-0.65, 0.65),
    "mole_v": (-0.05, 0.60),
}
IDENTITY_NAMES: tuple[str, ...] = tuple(f.name for f in fields(IdentityParams))
assert tuple(_IDENTITY_RANGES) == IDENTITY_NAMES, "IdentityParams fields and ranges out of sync"

# Per-image nuisance attributes: name → (canonical value, how a raw uniform u maps to the full value).
# Kinds: "signed" 2u-1 in [-1, 1]; "unit" u in [0, 1]; "mouth" closed in 37 % of images, else open up to 1;
# "eyes" mostly open (1), sometimes squinting or shut; "flag" 0/1 at a rate. A ``strength`` in [0, 1] blends
# each value from the canonical one (0: every image of an identity is the same frontal, neutral, evenly lit
# picture on a grey background) to the full random one (1); for flags it scales the rate.
_NUISANCE_SPEC: dict[str, tuple[float, str]] = {
    "yaw": (0.0, "signed"),  # → ±0.6 rad
    "pitch": (0.0, "signed"),  # → ±0.2 rad
    "roll": (0.0, "signed"),  # → ±0.15 rad
    "scale": (0.0, "signed"),  # → 1 ± 0.08
    "shift_x": (0.0, "signed"),  # → ±0.07
    "shift_y": (0.0, "signed"),
    "smile": (0.2, "signed"),  # frown … smile
    "mouth_open": (0.0, "mouth"),
    "eye_open": (1.0, "eyes"),
    "brow_raise": (0.0, "signed"),
    "gaze_x": (0.0, "signed"),
    "gaze_y": (0.0, "signed"),
    "light_azimuth": (0.0, "signed"),  # → ±π
    "light_elevation": (0.6, "unit"),
    "light_strength": (0.3, "unit"),
    "brightness": (0.0, "signed"),
    "warmth": (0.0, "signed"),  # colour temperature
    "bg_r": (0.78, "unit"),
    "bg_g": (0.78, "unit"),
    "bg_b": (0.78, "unit"),
    "bg_gradient": (0.0, "signed"),
    "bg_angle": (0.0, "signed"),  # → ±π
    "shirt_r": (0.35, "unit"),
    "shirt_g": (0.42, "unit"),
    "shirt_b": (0.55, "unit"),
    "hair_colour": (0.2, "unit"),  # black-brown-auburn-blonde-grey palette
    "hair_volume": (0.5, "unit"),
    "hair_length": (0.3, "unit"),
    "hairline": (0.5, "unit"),  # high … low
    "hair_part": (0.0, "signed"),
    "bald": (0.0, "flag"),
    "glasses": (0.0, "flag"),
    "glasses_tint": (0.0, "unit"),
}
NUISANCE_NAMES: tuple[str, ...] = tuple(_NUISANCE_SPEC)
_NUISANCE_CANONICAL = np.array([canonical for canonical, _ in _NUISANCE_SPEC.values()])
_FLAG_RATES = {"bald": 0.08, "glasses": 0.25}


def _raw_uniforms(entropy: Sequence[int], count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1) from PCG64 raw output: the same for given entropy on any numpy version."""
    bits = np.random.PCG64(np.random.SeedSequence(list(entropy))).random_raw(count)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def identity_param_array(seed: int, identities: Sequence[int] | np.ndarray) -> np.ndarray:
    """(N, len(IDENTITY_NAMES)) physical identity parameters for the given identity indices."""
    lows = np.array([lo for lo, _ in _IDENTITY_RANGES.values()])
    highs = np.array([hi for _, hi in _IDENTITY_RANGES.values()])
    uniforms = np.stack(
        [_raw_uniforms([seed, _STREAM_IDENTITY, int(i)], len(lows)) for i in identities]
    ).reshape(-1, len(lows))
    return lows + uniforms * (highs - lows)


def nuisance_param_array(seed: int, identity: int, num_images: int, strength: float = 1.0) -> np.ndarray:
    """(num_images, len(NUISANCE_NAMES)) nuisance values for images 0..num_images-1 of ``identity``."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"nuisance strength must lie in [0, 1], got {strength}")
    count = len(NUISANCE_NAMES)
    u = _raw_uniforms([seed, _STREAM_NUISANCE, int(identity)], num_images * count).reshape(num_images, count)
    values = np.empty_like(u)
    for j, (name, (canonical, kind)) in enumerate(_NUISANCE_SPEC.items()):
        if kind == "flag":
            values[:, j] = (u[:, j] < _FLAG_RATES[name] * strength).astype(np.float64)
            continue
        if kind == "signed":
            full = 2.0 * u[:, j] - 1.0
        elif kind == "mouth":
            full = np.clip(1.6 * u[:, j] - 0.6, 0.0, 1.0)
        elif kind == "eyes":
            full = 1.0 - 0.85 * u[:, j] ** 4
        else:
            full = u[:, j]
        values[:, j] = canonical + strength * (full - canonical)
    return values


# ----------------------------------------------------------------------------------------------------
# Renderer
# ----------------------------------------------------------------------------------------------------

_SKIN = torch.tensor(
    [[0.33, 0.20, 0.13], [0.55, 0.36, 0.24], [0.78, 0.57, 0.44], [0.96, 0.80, 0.68], [1.00, 0.88, 0.80]]
)
_IRIS = torch.tensor(
    [[0.28, 0.15, 0.07], [0.50, 0.36, 0.14], [0.28, 0.52, 0.28], [0.25, 0.48, 0.85], [0.55, 0.62, 0.68]]
)
_HAIR = torch.tensor(
    [[0.06, 0.05, 0.05], [0.25, 0.15, 0.08], [0.50, 0.23, 0.10], [0.85, 0.68, 0.36], [0.72, 0.72, 0.74]]
)
_LIP = torch.tensor([[0.72, 0.45, 0.42], [0.78, 0.30, 0.32], [0.70, 0.12, 0.18]])
_OUTLINE = torch.tensor([0.18, 0.10, 0.08])

_EYE_DEPTH = 0.82  # head depth / head width: features move with yaw by this much of the head width


def _palette(position: Tensor, table: Tensor) -> Tensor:
    """Piecewise-linear colour lookup: (B,) positions in [0, 1] → (B, 3)."""
    scaled = position.clamp(0, 1) * (len(table) - 1)
    lower = scaled.floor().long().clamp(max=len(table) - 2)
    frac = (scaled - lower)[:, None]
    return table[lower] * (1 - frac) + table[lower + 1] * frac


def _col(values: Tensor) -> Tensor:
    """(B,) → (B, 1, 1), to broadcast a per-image scalar over the pixel grid."""
    return values[:, None, None]


class _Painter:
    """Composites anti-aliased shapes onto a (B, 3, H, W) canvas.

    Shape parameters are (B,) tensors in face units; distances come back in pixels, so the coverage of a
    shape is a one-pixel ramp at any image size.
    """

    def __init__(self, x: Tensor, y: Tensor, pixel: Tensor, canvas: Tensor) -> None:
        self.inv_pixel = 1.0 / pixel
        self.xp, self.yp = x * _col(self.inv_pixel), y * _col(self.inv_pixel)
        self.canvas = canvas

    def crop(self, rows: slice, cols: slice) -> _Painter:
        """The same painter on a window of the canvas (views: painting there paints the full canvas)."""
        window = object.__new__(_Painter)
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
        inv_rx, inv_ry = _col(1.0 / (rx * s)), _col(1.0 / (ry * s))
        px = (self.xp - _col(cx * s)) * inv_rx
        py = (self.yp - _col(cy * s)) * inv_ry
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
        taper: float = 0.6,
    ) -> Tensor:
        """Signed distance to a thick stroke along y = cy + slope·dx + bend·(dx/L)², tapered at its ends."""
        s = self.inv_pixel
        length = _col(half_length * s)
        dx = self.xp - _col(cx * s)
        t = dx / length
        t_sq = t * t
        slope = _col(torch.as_tensor(slope).expand_as(cx))
        centre = torch.addcmul(_col(cy * s) + slope * dx, _col(bend * s), t_sq)
        gradient = slope + (2 * _col(bend * s) / length) * t
        across = (self.yp - centre).abs_() * torch.rsqrt(1 + gradient * gradient)
        thickness = _col(half_thickness * s) * (1 - taper * t_sq)
        return torch.maximum(across - thickness, dx.abs_() - length)

    def rounded_box(
        self, cx: Tensor, top: Tensor, bottom: Tensor, half_width: Tensor, radius: Tensor
    ) -> Tensor:
        """Signed distance to a box with rounded corners (vertical extent top..bottom)."""
        s = self.inv_pixel
        r = _col(radius * s)
        qx = (self.xp - _col(cx * s)).abs_() - _col(half_width * s) + r
        qy = (self.yp - _col((top + bottom) * 0.5 * s)).abs_() - _col((bottom - top) * 0.5 * s) + r
        outside = torch.hypot(qx.clamp(min=0), qy.clamp(min=0))
        return outside + torch.maximum(qx, qy).clamp_(max=0) - r


def _feature_window(corners_x: Tensor, corners_y: Tensor, to_canvas: Any, size: int) -> tuple[slice, slice]:
    """Pixel rows/cols covering face-frame boxes (B, 4 corners) of every image in the chunk."""
    cx, cy = to_canvas(corners_x, corners_y)
    to_px = size / 2.0
    col_lo = int(((cx.min() + 1) * to_px).floor()) - 2
    col_hi = int(((cx.max() + 1) * to_px).ceil()) + 2
    row_lo = int(((cy.min() + 1) * to_px).floor()) - 2
    row_hi = int(((cy.max() + 1) * to_px).ceil()) + 2
    return slice(max(row_lo, 0), min(max(row_hi, 1), size)), slice(max(col_lo, 0), min(max(col_hi, 1), size))


def _render_chunk(identity: Tensor, nuisance: Tensor, size: int) -> Tensor:
    """Render one chunk: identity (B, Ki), nuisance (B, Kn) physical values → (B, 3, H, W) in [0, 1]."""
    p = {name: identity[:, i] for i, name in enumerate(IDENTITY_NAMES)}
    n = {name: nuisance[:, i] for i, name in enumerate(NUISANCE_NAMES)}
    batch = identity.shape[0]
    ones, zeros = torch.ones(batch), torch.zeros(batch)

    def solid(*rgb: float) -> Tensor:
        return torch.tensor(rgb).expand(batch, 3)

    # Pixel centres in canvas units, then into the face frame: undo per-image shift, roll and scale.
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    gx, gy = coords[None, None, :], coords[None, :, None]
    scale = 1.0 + 0.08 * n["scale"]
    roll = 0.15 * n["roll"]
    cos_r, sin_r = torch.cos(roll), torch.sin(roll)
    shift_x, shift_y = 0.07 * n["shift_x"], 0.07 * n["shift_y"]
    dx, dy = gx - _col(shift_x), gy - _col(shift_y)
    x = (_col(cos_r) * dx + _col(sin_r) * dy) / _col(scale)
    y = (_col(cos_r) * dy - _col(sin_r) * dx) / _col(scale)

    def to_canvas(fx: Tensor, fy: Tensor) -> tuple[Tensor, Tensor]:
        """Face frame → canvas, for (B, k) points."""
        s, c, si = scale[:, None], cos_r[:, None], sin_r[:, None]
        return s * (c * fx - si * fy) + shift_x[:, None], s * (si * fx + c * fy) + shift_y[:, None]

    # Background: a two-colour linear gradient in canvas coordinates.
    bg = torch.stack([n["bg_r"], n["bg_g"], n["bg_b"]], 1) * 0.85 + 0.1
    bg_angle = math.pi * n["bg_angle"]
    ramp = _col(torch.cos(bg_angle)) * gx + _col(torch.sin(bg_angle)) * gy
    shade_bg = 1.0 + 0.35 * _col(n["bg_gradient"]) * ramp
    canvas = (bg[:, :, None, None] * shade_bg[:, None]).clamp_(0, 1)
    paint = _Painter(x, y, (2.0 / size) / scale, canvas)

    # Head geometry and the projection of face features under yaw / pitch.
    head_w, head_h = p["face_width"], p["face_height"]
    head_x, head_y = zeros, torch.full((batch,), -0.06)
    yaw, pitch = 0.6 * n["yaw"], 0.2 * n["pitch"]
    cos_y, sin_y, cos_p, sin_p = torch.cos(yaw), torch.sin(yaw), torch.cos(pitch), torch.sin(pitch)

    def project(u: Tensor, v: Tensor, protrusion: float | Tensor = 0.0) -> tuple[Tensor, Tensor, Tensor]:
        """Face-surface point (u, v in head radii) → face-frame (x, y) and horizontal foreshortening."""
        depth = (1.0 - u * u - 0.5 * v * v).clamp(min=0.05).sqrt()
        z = _EYE_DEPTH * depth + protrusion
        sx = head_x + head_w * (u * cos_y + z * sin_y)
        sy = head_y + head_h * (v * cos_p - (z - _EYE_DEPTH) * sin_p)
        squash = (cos_y - _EYE_DEPTH * u / depth * sin_y).clamp(0.12, 1.2)
        return sx, sy, squash

    skin = _palette(p["skin_tone"], _SKIN)
    skin = (skin + 0.07 * p["skin_warmth"][:, None] * torch.tensor([0.3, 0.2, -1.0])).clamp(0, 1)
    shadow_skin = skin * 0.8
    outline = skin * 0.45 + _OUTLINE * 0.2
    hair = _palette(n["hair_colour"], _HAIR)
    has_hair = _col(1.0 - n["bald"])

    # Shoulders and neck.
    shirt = torch.stack([n["shirt_r"], n["shirt_g"], n["shirt_b"]], 1) * 0.8 + 0.1
    paint.paint(
        paint.alpha(paint.ellipse(head_x + 0.1 * sin_y, head_y + head_h + 0.75, ones * 0.95, ones * 0.5)),
        shirt,
    )
    neck_d = paint.ellipse(head_x + 0.05 * sin_y, head_y + head_h * 0.95, head_w * 0.5, ones * 0.33)
    paint.paint(paint.alpha(neck_d), shadow_skin)

    # Long hair behind the head: the hair cap united with a rounded box down to the hair length.
    hair_x = head_x + head_w * _EYE_DEPTH * 0.35 * sin_y
    volume = n["hair_volume"]
    cap_rx = head_w * (1.04 + 0.16 * volume)
    cap_ry = head_h * (0.97 + 0.1 * volume)
    cap_y = head_y - head_h * (0.02 + 0.06 * volume)
    cap_d = paint.ellipse(hair_x, cap_y, cap_rx, cap_ry)
    back_bottom = head_y + head_h * (0.15 + 1.1 * n["hair_length"])
    box_d = paint.rounded_box(hair_x, cap_y, back_bottom, cap_rx * 0.97, cap_rx * 0.3)
    is_long = _col((n["hair_length"] > 0.35).float()) * has_hair
    paint.paint(paint.alpha(torch.minimum(cap_d, box_d)) * is_long, hair * 0.75)

    # Ears sit on the head's sides; the far one disappears behind the head when turned.
    for side in (-1.0, 1.0):
        ex, ey, squash = project(side * ones * 0.97, p["ear_height"] + p["eye_height"] * 0.5)
        ear_rx, ear_ry = p["ear_size"] * 0.55 * (0.5 + 0.5 * squash), p["ear_size"]
        ear_x = ex + side * ear_rx * 0.5
        paint.paint(paint.alpha(paint.ellipse(ear_x, ey, ear_rx, ear_ry, grow=0.012)), outline)
        paint.paint(paint.alpha(paint.ellipse(ear_x, ey, ear_rx, ear_ry)), skin)
        inner = paint.ellipse(ear_x + side * ear_rx * 0.1, ey, ear_rx * 0.45, ear_ry * 0.6)
        paint.paint(paint.alpha(inner) * 0.5, shadow_skin)

    # Head: an ellipse whose half-width narrows towards the chin (a per-pixel radius).
    below = ((y - _col(head_y)) / _col(head_h)).clamp(0, 1)
    narrowing = 1.0 - _col(p["jaw_taper"]) * below * below
    px_rel = (x - _col(head_x)) / (_col(head_w) * narrowing)
    py_rel = (y - _col(head_y)) / (_col(head_h) * (1.0 + _col(p["chin_length"]) * below))
    head_d = (torch.hypot(px_rel, py_rel) - 1.0) * (
        _col(torch.minimum(head_w, head_h) * paint.inv_pixel) * narrowing
    )
    paint.paint(paint.alpha(head_d - _col(0.018 * paint.inv_pixel)), outline)
    head_alpha = paint.alpha(head_d)
    paint.paint(head_alpha, skin)

    # Where the small features land: one window for the whole chunk, so they cost a fraction of the frame.
    eye_rx = p["eye_size"]
    eye_ry = eye_rx * p["eye_aspect"] * (0.12 + 0.88 * n["eye_open"])
    eyes = [project(side * p["eye_spacing"], p["eye_height"]) for side in (-1.0, 1.0)]
    eye_v = p["eye_height"]
    tip_v = eye_v + p["nose_length"] / head_h
    mouth_v = tip_v + p["mouth_gap"] / head_h
    mouth_x, mouth_y, mouth_squash = project(zeros, mouth_v, 0.05)
    lens_rx = eye_rx * 1.45 + 0.035
    brow_top = (
        torch.minimum(eyes[0][1], eyes[1][1])
        - p["brow_gap"]
        - eye_ry * 0.3
        - 0.05 * n["brow_raise"]
        - p["brow_thickness"]
        - 0.02
    )
    reach = torch.maximum(head_w * 0.62 + lens_rx + 0.05, head_w + 0.03)
    top = torch.minimum(eyes[0][1], eyes[1][1]) - p["brow_gap"] - 0.12 - lens_rx * 0.3
    bottom = head_y + head_h * (1.0 + p["chin_length"]) + 0.03
    box_x = torch.stack([head_x - reach, head_x + reach, head_x - reach, head_x + reach], 1)
    box_y = torch.stack([top, top, bottom, bottom], 1)
    rows, cols = _feature_window(box_x, box_y, to_canvas, size)
    face = paint.crop(rows, cols)
    on_skin = head_alpha[:, rows, cols]

    # Cheeks.
    for side in (-1.0, 1.0):
        cx, cy, squash = project(side * ones * 0.55, ones * 0.25)
        cheek = face.alpha(face.ellipse(cx, cy, 0.09 * squash, ones * 0.06, grow=-0.035))
        face.paint(cheek * _col(0.35 * p["cheek_blush"]), solid(0.95, 0.45, 0.45))

    # Eyes: outline, white, iris (clipped to the white), pupil, glint, lid; then brows.
    iris = _palette(p["iris_colour"], _IRIS)
    brow = torch.lerp(
        torch.tensor([0.06, 0.04, 0.03]), torch.tensor([0.5, 0.36, 0.24]), 1 - p["brow_darkness"][:, None]
    )
    for side, (ex, ey, squash) in zip((-1.0, 1.0), eyes, strict=True):
        rx = eye_rx * squash
        visible = _col((squash * 4).clamp(0, 1))
        face.paint(face.alpha(face.ellipse(ex, ey, rx, eye_ry, grow=0.016)) * visible, outline * 0.6)
        white_alpha = face.alpha(face.ellipse(ex, ey, rx, eye_ry)) * visible
        face.paint(white_alpha, solid(0.97, 0.97, 0.97))
        iris_r = eye_rx * 0.58
        iris_x = ex + (0.45 * n["gaze_x"] * eye_rx - sin_y * eye_rx * 0.3) * squash
        iris_y = ey + 0.25 * n["gaze_y"] * eye_ry
        face.paint(face.alpha(face.ellipse(iris_x, iris_y, iris_r * squash, iris_r)) * white_alpha, iris)
        pupil_r = iris_r * 0.45
        face.paint(
            face.alpha(face.ellipse(iris_x, iris_y, pupil_r * squash, pupil_r)) * white_alpha, iris * 0.15
        )
        glint = face.ellipse(iris_x - iris_r * 0.3, iris_y - iris_r * 0.35, iris_r * 0.22, iris_r * 0.22)
        face.paint(face.alpha(glint) * white_alpha * 0.9, solid(1.0, 1.0, 1.0))
        lid = face.curve(ex, ey - eye_ry * 0.75, rx * 1.05, eye_ry * 0.55, 0.0, ones * 0.012, taper=0.7)
        face.paint(face.alpha(lid) * visible, outline * 0.4)

        bx, _, _ = project(side * (p["eye_spacing"] + 0.02), p["eye_height"])
        by = ey - p["brow_gap"] - 0.05 * n["brow_raise"] - eye_ry * 0.3
        brow_d = face.curve(
            bx,
            by,
            p["brow_length"] * squash,
            p["brow_arch"],
            -side * p["brow_slope"] * 0.35,
            p["brow_thickness"] * 0.5 + 0.004,
        )
        face.paint(face.alpha(brow_d) * visible, brow)

    # Nose: a shaded bridge, a tip and two nostrils; the tip protrudes, so it moves furthest under yaw.
    bridge_x, bridge_y, _ = project(zeros, (eye_v + tip_v) * 0.5, 0.12)
    tip_x, tip_y, tip_squash = project(zeros, tip_v, 0.25)
    nose_w = p["nose_width"]
    bridge_d = face.ellipse(
        (bridge_x + tip_x) * 0.5 + 0.3 * nose_w * sin_y,
        (bridge_y + tip_y) * 0.5,
        nose_w * 0.45,
        (tip_y - bridge_y) * 0.9 + 0.03,
    )
    face.paint(face.alpha(bridge_d) * 0.35, shadow_skin * 0.9)
    tip_d = face.ellipse(tip_x, tip_y, nose_w * (0.55 + 0.45 * tip_squash), nose_w * 0.55)
    face.paint(face.alpha(tip_d) * 0.55, shadow_skin)
    highlight_d = face.ellipse(tip_x, tip_y - nose_w * 0.2, nose_w * 0.4, nose_w * 0.35)
    face.paint(face.alpha(highlight_d) * 0.6, (skin * 1.08).clamp(max=1.0))
    for side in (-1.0, 1.0):
        nostril = face.ellipse(
            tip_x + side * nose_w * 0.55 * tip_squash, tip_y + nose_w * 0.3, nose_w * 0.26, nose_w * 0.17
        )
        face.paint(face.alpha(nostril) * 0.85, outline * 0.7)

    # Facial hair, part of the identity: a beard over the jaw up to the sideburns, and a moustache.
    half_w = p["mouth_width"] * mouth_squash * (1.0 + 0.12 * n["smile"])
    smile_bend = -0.045 * n["smile"]
    opening = 0.075 * n["mouth_open"]
    lip_t = p["lip_thickness"]
    facial_hair = brow * 0.85 + skin * 0.15
    beard_density = _col((p["facial_hair"] > 0.8).float() * (0.5 + 2.0 * (p["facial_hair"] - 0.8)))
    from_mouth = ((face.xp - _col(mouth_x * face.inv_pixel)) / _col(head_w * face.inv_pixel)).square_()
    beard_top = (
        _col((mouth_y - 0.02) * face.inv_pixel) - _col(0.6 * head_h * face.inv_pixel) * from_mouth.square()
    )
    face.paint(face.alpha(beard_top - face.yp) * on_skin * beard_density, facial_hair)
    moustache = face.curve(
        mouth_x,
        mouth_y - opening * 0.5 - lip_t * 1.4 - 0.032,
        half_w * 1.3,
        0.04 + smile_bend * 0.5,
        0.0,
        ones * 0.017,
        taper=0.6,
    )
    face.paint(face.alpha(moustache) * _col((p["facial_hair"] > 0.6).float()), facial_hair)

    # Mouth: dark opening (with teeth) between two lips bent by the smile.
    lips = _palette(p["lip_redness"], _LIP) * (0.55 + 0.45 * skin)
    hole_alpha = face.alpha(
        face.ellipse(mouth_x, mouth_y + smile_bend * 0.5, half_w * 0.9, opening * 0.5 + 0.004)
    )
    face.paint(hole_alpha, solid(0.25, 0.05, 0.07))
    teeth = face.ellipse(
        mouth_x, mouth_y - opening * 0.35 + smile_bend * 0.5, half_w * 0.7, opening * 0.3 + 0.002
    )
    face.paint(face.alpha(teeth) * hole_alpha, solid(0.95, 0.95, 0.95))
    upper = face.curve(
        mouth_x,
        mouth_y - opening * 0.5 - lip_t * 0.7,
        half_w,
        smile_bend,
        0.0,
        lip_t * 0.8 + 0.007,
        taper=0.8,
    )
    lower = face.curve(
        mouth_x,
        mouth_y + opening * 0.5 + lip_t * 0.9,
        half_w * 0.85,
        smile_bend * 0.8,
        0.0,
        lip_t * 1.1 + 0.008,
        taper=0.75,
    )
    face.paint(face.alpha(upper), lips * 0.85)
    face.paint(face.alpha(lower), lips)
    seam = face.curve(
        mouth_x, mouth_y + smile_bend * 0.1, half_w * 1.02, smile_bend, 0.0, ones * 0.006, taper=0.3
    )
    face.paint(face.alpha(seam) * _col((n["mouth_open"] < 0.15).float()) * 0.8, lips * 0.35)

    # Mole (on the skin only).
    mole_x, mole_y, _ = project(p["mole_u"], p["mole_v"])
    mole_alpha = face.alpha(face.ellipse(mole_x, mole_y, ones * 0.022, ones * 0.022))
    face.paint(mole_alpha * _col((p["mole_present"] > 0.5).float()) * on_skin, outline * 0.5)

    # Lighting: Lambertian shading from the head's ellipsoid normal, on the face only.
    nx = ((x - _col(head_x)) / _col(head_w)).clamp_(-1, 1)
    ny = ((y - _col(head_y)) / _col(head_h)).clamp_(-1, 1)
    nz = (1.0 - nx * nx - ny * ny).clamp_(min=0.0).sqrt_()
    azimuth, elevation = math.pi * n["light_azimuth"], 0.25 + 1.2 * n["light_elevation"]
    lx = torch.sin(azimuth) * torch.cos(elevation)
    ly = -torch.cos(azimuth) * torch.cos(elevation) * 0.6
    lz = torch.sin(elevation)
    lambert = (_col(lx) * nx + _col(ly) * ny + _col(lz) * nz).clamp_(min=0.0)
    strength = _col(0.5 * n["light_strength"])
    shading = (1.0 - strength) + (strength * 1.25) * lambert
    canvas.mul_(1.0 + head_alpha[:, None] * (shading[:, None] - 1.0))

    # Hair on top: the cap, cut off below a hairline that drops at the temples.
    # The hairline is placed relative to the brows, so a fringe never hides them.
    hairline_top = brow_top - 0.04 - 0.22 * (1.0 - n["hairline"])
    across = (x - _col(hair_x)) / _col(head_w)
    across_sq = across * across
    temple_drop = _col(head_h * 0.7 * (1 - 0.5 * n["hair_volume"]))
    hairline_y = (
        _col(hairline_top) + temple_drop * across_sq * across_sq + 0.08 * _col(n["hair_part"]) * across
    )
    hair_d = torch.maximum(cap_d, (y - hairline_y) * _col(paint.inv_pixel))
    paint.paint(paint.alpha(hair_d) * has_hair, hair)

    # Glasses: two rims, a bridge and a tint, over everything on the face.
    has_glasses = _col(n["glasses"])
    rim = 0.45 + 0.008 * paint.inv_pixel  # half-thickness in pixels: visible at 32 px, thin at 256
    frame = solid(0.08, 0.08, 0.08)
    for ex, ey, squash in eyes:
        lens = face.ellipse(ex, ey, lens_rx * squash, lens_rx * 0.78)
        tint = face.alpha(lens) * has_glasses * _col(0.15 + 0.6 * n["glasses_tint"] ** 2)
        face.paint(tint, solid(0.1, 0.1, 0.12))
        face.paint(face.alpha(lens.abs_() - _col(rim)) * has_glasses, frame)
    (left_x, left_y, left_s), (right_x, right_y, right_s) = eyes
    bridge_len = ((right_x - left_x) * 0.5 - lens_rx * (left_s + right_s) * 0.5).clamp(min=0.01)
    bridge = face.curve(
        (left_x + right_x) * 0.5,
        (left_y + right_y) * 0.5 - 0.02,
        bridge_len,
        ones * -0.01,
        0.0,
        rim / paint.inv_pixel,
        taper=0.0,
    )
    face.paint(face.alpha(bridge) * has_glasses, frame)

    # Global light level and colour temperature.
    gain = 1.0 + 0.15 * n["brightness"]
    temperature = torch.stack([1 + 0.06 * n["warmth"], ones, 1 - 0.06 * n["warmth"]], 1) * gain[:, None]
    return canvas.mul_(temperature[:, :, None, None]).clamp_(0.0, 1.0)


def render_faces(
    identity: Tensor | np.ndarray,
    nuisance: Tensor | np.ndarray,
    size: int = 64,
    chunk: int = 128,
    workers: int | None = None,
) -> Tensor:
    """Physical identity (B, Ki) and nuisance (B, Kn) parameters → faces (B, 3, size, size) in [-1, 1].

    Chunks render in parallel on ``workers`` threads (default: torch's thread count), each op on one
    thread (torch's intra-op thread count is set to 1 meanwhile, for the whole process). Coarse parallelism
    keeps its speed on a busy machine, where torch's per-op threads stall on each other: on a shared 2-core
    box, 2 intra-op threads took 229 s per 10k faces, 2 chunk workers 10.5 s.
    """
    if not 16 <= size <= 1024:
        raise ValueError(f"size must lie in [16, 1024], got {size}")
    identity = torch.as_tensor(identity, dtype=torch.float32)
    nuisance = torch.as_tensor(nuisance, dtype=torch.float32)
    if identity.shape[0] != nuisance.shape[0]:
        raise ValueError("identity and nuisance batches differ in length")
    # Keep each chunk's working set (~30 pixel-sized temporaries) near the cache size at every resolution.
    per_chunk = max(1, chunk * 64 * 64 // (size * size))
    starts = range(0, identity.shape[0], per_chunk)
    out = torch.empty(identity.shape[0], 3, size, size)

    @torch.inference_mode()
    def render(start: int) -> None:
        stop = start + per_chunk
        out[start:stop] = _render_chunk(identity[start:stop], nuisance[start:stop], size).mul_(2.0).sub_(1.0)

    intra_op_threads = torch.get_num_threads()
    workers = max(1, min(workers or intra_op_threads, len(starts)))
    torch.set_num_threads(1)  # process-wide: restored below
    try:
        if workers == 1:
            for start in starts:
                render(start)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(render, starts))
    finally:
        torch.set_num_threads(intra_op_threads)
    return out


def render_identity(
    seed: int, identity: int, num_images: int, size: int = 64, strength: float = 1.0
) -> Tensor:
    """Images 0..num_images-1 of one identity, as a dataset with these parameters would render them."""
    ident = np.repeat(identity_param_array(seed, [identity]), num_images, axis=0)
    return render_faces(ident, nuisance_param_array(seed, identity, num_images, strength), size)


# ----------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------


def split_identities(num_identities: int, seed: int, fractions: Sequence[float]) -> dict[str, np.ndarray]:
    """Disjoint, sorted identity sets per split, from a seeded permutation."""
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {fractions}")
    keys = _raw_uniforms([seed, _STREAM_SPLIT, num_identities], num_identities)
    order = np.argsort(keys, kind="stable")
    n_train = round(fractions[0] * num_identities)
    n_val = min(round(fractions[1] * num_identities), num_identities - n_train)
    bounds = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, num_identities),
    }
    return {split: np.sort(order[a:b]) for split, (a, b) in bounds.items()}


def _atomic_save(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class SynthFaces(Dataset):
    """Identity-labelled synthetic faces, rendered once per parameter set and cached under ``root``.

    Items are ``{"image": (3, H, W) float in [-1, 1], "identity": global identity id, "attributes": float
    tensor of the NUISANCE_NAMES values}``. The train/val/test splits hold disjoint identities.
    ``nuisance`` scales how much images of one identity differ (0: identical pictures).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        size: int = 64,
        num_identities: int = 1000,
        images_per_identity: int = 10,
        seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        nuisance: float = 1.0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if num_identities < 1 or images_per_identity < 1:
            raise ValueError("num_identities and images_per_identity must be positive")
        self.root, self.split, self.size = Path(root), split, int(size)
        self.num_identities, self.images_per_identity, self.seed = num_identities, images_per_identity, seed
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.nuisance = float(nuisance)
        self.identities = split_identities(num_identities, seed, self.split_fractions)[split]
        self.cache_dir = self.root / f"synthfaces-v{RENDERER_VERSION}-{self._digest()}"
        self.images, self.identity_labels, self.attributes = self._load_or_render()

    @property
    def num_classes(self) -> int:
        """Identity ids are global, so a classifier head needs ``num_identities`` outputs."""
        return self.num_identities

    def manifest(self) -> dict[str, Any]:
        return {
            "dataset": "synthfaces",
            "renderer_version": RENDERER_VERSION,
            "size": self.size,
            "num_identities": self.num_identities,
            "images_per_identity": self.images_per_identity,
            "seed": self.seed,
            "split_fractions": list(self.split_fractions),
            "nuisance": self.nuisance,
            "identity_names": list(IDENTITY_NAMES),
            "attribute_names": list(NUISANCE_NAMES),
        }

    def _digest(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest(), sort_keys=True).encode()).hexdigest()[:12]

    def _paths(self) -> dict[str, Path]:
        stem = self.cache_dir / self.split
        return {
            "manifest": stem.with_suffix(".json"),
            "images": self.cache_dir / f"{self.split}-images.npy",
            "identity": self.cache_dir / f"{self.split}-identity.npy",
            "attributes": self.cache_dir / f"{self.split}-attributes.npy",
        }

    def _expected_manifest(self) -> dict[str, Any]:
        return {
            **self.manifest(),
            "split": self.split,
            "count": len(self.identities) * self.images_per_identity,
        }

    def _load_or_render(self) -> tuple[Tensor, Tensor, Tensor]:
        paths = self._paths()
        expected = self._expected_manifest()
        try:
            found = json.loads(paths["manifest"].read_text())
            if found == expected:
                images = np.load(paths["images"])
                labels = np.load(paths["identity"])
                attributes = np.load(paths["attributes"])
                count = expected["count"]
                if (
                    images.shape == (count, 3, self.size, self.size)
                    and len(labels) == len(attributes) == count
                ):
                    return torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(attributes)
        except (OSError, ValueError):
            pass  # missing or damaged cache: render again
        images, labels, attributes = self._render()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Arrays first, manifest last: the manifest marks a complete split.
        _atomic_save(paths["images"], lambda f: np.save(f, images))
        _atomic_save(paths["identity"], lambda f: np.save(f, labels))
        _atomic_save(paths["attributes"], lambda f: np.save(f, attributes))
        _atomic_save(paths["manifest"], lambda f: f.write(json.dumps(expected, indent=2).encode()))
        return torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(attributes)

    def _render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        per = self.images_per_identity
        identity_params = np.repeat(identity_param_array(self.seed, self.identities), per, axis=0)
        nuisance = [nuisance_param_array(self.seed, int(i), per, self.nuisance) for i in self.identities]
        nuisance_params = np.concatenate(nuisance) if nuisance else np.zeros((0, len(NUISANCE_NAMES)))
        labels = np.repeat(self.identities.astype(np.int64), per)
        images = np.empty((len(labels), 3, self.size, self.size), dtype=np.uint8)
        block = 2048  # bounds the float32 working copy
        for start in range(0, len(labels), block):
            rendered = render_faces(
                identity_params[start : start + block], nuisance_params[start : start + block], self.size
            )
            images[start : start + block] = (
                rendered.add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)
            )
        return images, labels, nuisance_params.astype(np.float32)

    def __len__(self) -> int:
        return len(self.identity_labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.images[index].float().div_(127.5).sub_(1.0),
            "identity": int(self.identity_labels[index]),
            "attributes": self.attributes[index],
        }
