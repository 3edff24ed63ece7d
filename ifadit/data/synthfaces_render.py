"""The SynthFaces renderer: identity and nuisance parameters to face images, batched and threaded.

Shoulders, long hair, ears and head, then the features (cheeks, eyes and brows, nose, facial hair, mouth, a
mole), the lighting, the hair on top and glasses are painted in that order with
:class:`~ifadit.data.synthfaces_painter.Painter`; the features are painted inside one window per chunk, so
they cost a fraction of the frame.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from ifadit.data.synthfaces_painter import (
    HAIR,
    IRIS,
    LIP,
    OUTLINE,
    SKIN,
    Painter,
    col,
    feature_window,
    palette,
    pattern,
)
from ifadit.data.synthfaces_params import (
    IDENTITY_NAMES,
    NUISANCE_NAMES,
    identity_param_array,
    nuisance_param_array,
)

_EYE_DEPTH = 0.82  # head depth / head width: features move with yaw by this much of the head width
_ZOOM = 1.45  # the head fills more of the frame (as in FFHQ crops), so its details get more pixels
_FRECKLES = 16  # the most freckles a face has


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
    scale = _ZOOM * (1.0 + 0.08 * n["scale"])
    roll = 0.15 * n["roll"]
    cos_r, sin_r = torch.cos(roll), torch.sin(roll)
    shift_x, shift_y = 0.07 * n["shift_x"], 0.07 * n["shift_y"]
    dx, dy = gx - col(shift_x), gy - col(shift_y)
    x = (col(cos_r) * dx + col(sin_r) * dy) / col(scale)
    y = (col(cos_r) * dy - col(sin_r) * dx) / col(scale)

    def to_canvas(fx: Tensor, fy: Tensor) -> tuple[Tensor, Tensor]:
        """Face frame → canvas, for (B, k) points."""
        s, c, si = scale[:, None], cos_r[:, None], sin_r[:, None]
        return s * (c * fx - si * fy) + shift_x[:, None], s * (si * fx + c * fy) + shift_y[:, None]

    # Background: a two-colour linear gradient in canvas coordinates.
    bg = torch.stack([n["bg_r"], n["bg_g"], n["bg_b"]], 1) * 0.85 + 0.1
    bg_angle = math.pi * n["bg_angle"]
    ramp = col(torch.cos(bg_angle)) * gx + col(torch.sin(bg_angle)) * gy
    shade_bg = 1.0 + 0.35 * col(n["bg_gradient"]) * ramp
    canvas = (bg[:, :, None, None] * shade_bg[:, None]).clamp_(0, 1)
    paint = Painter(x, y, (2.0 / size) / scale, canvas)

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

    skin = palette(p["skin_tone"], SKIN)
    skin = (skin + 0.07 * p["skin_warmth"][:, None] * torch.tensor([0.3, 0.2, -1.0])).clamp(0, 1)
    shadow_skin = skin * 0.8
    outline = skin * 0.45 + OUTLINE * 0.2
    hair = palette(n["hair_colour"], HAIR)
    has_hair = col(1.0 - n["bald"])

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
    is_long = col((n["hair_length"] > 0.35).float()) * has_hair
    paint.paint(paint.alpha(torch.minimum(cap_d, box_d)) * is_long, hair * 0.75)

    # Ears sit on the head's sides; the far one disappears behind the head when turned.
    for side in (-1.0, 1.0):
        ex, ey, squash = project(side * ones * 0.97, p["ear_height"] + p["eye_height"] * 0.5)
        ear_rx = p["ear_size"] * (0.4 + 0.35 * p["ear_protrusion"]) * (0.5 + 0.5 * squash)
        ear_ry = p["ear_size"]
        ear_x = ex + side * ear_rx * 0.5
        paint.paint(paint.alpha(paint.ellipse(ear_x, ey, ear_rx, ear_ry, grow=0.012)), outline)
        paint.paint(paint.alpha(paint.ellipse(ear_x, ey, ear_rx, ear_ry)), skin)
        inner = paint.ellipse(ear_x + side * ear_rx * 0.1, ey, ear_rx * 0.45, ear_ry * 0.6)
        paint.paint(paint.alpha(inner) * 0.5, shadow_skin)

    # Head: an ellipse whose half-width narrows towards the chin (a per-pixel radius).
    below = ((y - col(head_y)) / col(head_h)).clamp(0, 1)
    narrowing = 1.0 - col(p["jaw_taper"]) * below * below
    px_rel = (x - col(head_x)) / (col(head_w) * narrowing)
    py_rel = (y - col(head_y)) / (col(head_h) * (1.0 + col(p["chin_length"]) * below))
    # Below the eye line the outline blends from an ellipse towards a squarer superellipse (exponent 2 … 5).
    exponent = 2.0 + 3.0 * col(p["jaw_square"]) * (py_rel > 0)
    radius = (px_rel.abs().pow(exponent) + py_rel.abs().pow(exponent)).pow(1.0 / exponent)
    head_d = (radius - 1.0) * (
        col(torch.minimum(head_w, head_h) * paint.inv_pixel) * narrowing
    )
    paint.paint(paint.alpha(head_d - col(0.018 * paint.inv_pixel)), outline)
    head_alpha = paint.alpha(head_d)
    paint.paint(head_alpha, skin)

    # Where the small features land: one window for the whole chunk, so they cost a fraction of the frame.
    eye_rx = p["eye_size"]
    eye_ry = eye_rx * p["eye_aspect"] * (0.12 + 0.88 * n["eye_open"])
    eyes = [
        project(side * p["eye_spacing"], p["eye_height"] - side * 0.035 * p["eye_asymmetry"])
        for side in (-1.0, 1.0)
    ]
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
    rows, cols = feature_window(box_x, box_y, to_canvas, size)
    face = paint.crop(rows, cols)
    on_skin = head_alpha[:, rows, cols]

    # Cheeks: blush, and the shadow under the cheekbones.
    for side in (-1.0, 1.0):
        cx, cy, squash = project(side * ones * 0.55, ones * 0.25)
        cheek = face.alpha(face.ellipse(cx, cy, 0.09 * squash, ones * 0.06, grow=-0.035))
        face.paint(cheek * col(0.35 * p["cheek_blush"]), solid(0.95, 0.45, 0.45))
        bone_x, bone_y, squash = project(side * ones * 0.7, ones * 0.4)
        bone = face.curve(bone_x, bone_y, 0.08 * squash, ones * 0.0, side * 0.5, ones * 0.03, taper=0.95)
        face.paint(face.alpha(bone) * on_skin * col(0.35 * p["cheekbones"]), shadow_skin * 0.9)

    # Eyes: outline, white, iris (clipped to the white), pupil, glint, lid; then brows.
    iris = palette(p["iris_colour"], IRIS)
    brow = torch.lerp(
        torch.tensor([0.06, 0.04, 0.03]), torch.tensor([0.5, 0.36, 0.24]), 1 - p["brow_darkness"][:, None]
    )
    for side, (ex, ey, squash) in zip((-1.0, 1.0), eyes, strict=True):
        rx = eye_rx * squash
        visible = col((squash * 4).clamp(0, 1))
        face.paint(face.alpha(face.ellipse(ex, ey, rx, eye_ry, grow=0.016)) * visible, outline * 0.6)
        white_alpha = face.alpha(face.ellipse(ex, ey, rx, eye_ry)) * visible
        face.paint(white_alpha, solid(0.97, 0.97, 0.97))
        iris_r = eye_rx * p["iris_size"]
        iris_x = ex + (0.45 * n["gaze_x"] * eye_rx - sin_y * eye_rx * 0.3) * squash
        iris_y = ey + 0.25 * n["gaze_y"] * eye_ry
        face.paint(face.alpha(face.ellipse(iris_x, iris_y, iris_r * squash, iris_r)) * white_alpha, iris)
        rim = col(0.4 + 0.006 * face.inv_pixel)  # half-width in pixels
        rim_d = face.ellipse(iris_x, iris_y, iris_r * squash, iris_r).abs_() - rim
        face.paint(face.alpha(rim_d) * white_alpha * col(p["iris_ring"]), iris * 0.3)
        pupil_r = iris_r * 0.45
        face.paint(
            face.alpha(face.ellipse(iris_x, iris_y, pupil_r * squash, pupil_r)) * white_alpha, iris * 0.15
        )
        glint = face.ellipse(iris_x - iris_r * 0.3, iris_y - iris_r * 0.35, iris_r * 0.22, iris_r * 0.22)
        face.paint(face.alpha(glint) * white_alpha * 0.9, solid(1.0, 1.0, 1.0))
        # Lids sloped by the eye's tilt (outer corner up for a positive tilt), lid weight, shadow below.
        tilt = -side * 0.3 * p["eye_tilt"]
        lid_t = 0.008 + 0.014 * p["lash_darkness"]
        lid = face.curve(ex, ey - eye_ry * 0.75, rx * 1.1, eye_ry * 0.55, tilt, lid_t, taper=0.7)
        face.paint(face.alpha(lid) * visible, outline * (0.5 - 0.4 * p["lash_darkness"][:, None]))
        lower_lid = face.curve(ex, ey + eye_ry * 0.85, rx * 0.95, -eye_ry * 0.4, tilt * 0.6, ones * 0.006)
        face.paint(face.alpha(lower_lid) * visible * 0.6, outline * 0.6)
        bag = face.curve(ex, ey + eye_ry + 0.03, rx * 0.8, -ones * 0.02, tilt * 0.3, ones * 0.014, taper=0.9)
        face.paint(face.alpha(bag) * visible * col(0.5 * p["under_eye"]), shadow_skin * 0.8)

        bx, _, _ = project(side * (p["eye_spacing"] + 0.02), p["eye_height"])
        by = ey - p["brow_gap"] - 0.05 * n["brow_raise"] - eye_ry * 0.3
        brow_d = face.curve(
            bx,
            by,
            p["brow_length"] * squash,
            p["brow_arch"],
            -side * p["brow_slope"] * 0.35,
            p["brow_thickness"] * 0.5 + 0.004,
            taper=p["brow_taper"][:, None, None],
        )
        face.paint(face.alpha(brow_d) * visible, brow)

    # Nose: a shaded bridge, a tip and two nostrils; the tip protrudes, so it moves furthest under yaw.
    bridge_x, bridge_y, _ = project(zeros, (eye_v + tip_v) * 0.5, 0.12)
    tip_x, tip_y, tip_squash = project(zeros, tip_v, 0.25)
    nose_w = p["nose_width"]
    bridge_d = face.ellipse(
        (bridge_x + tip_x) * 0.5 + 0.3 * nose_w * sin_y,
        (bridge_y + tip_y) * 0.5,
        nose_w * p["nose_bridge"],
        (tip_y - bridge_y) * 0.9 + 0.03,
    )
    face.paint(face.alpha(bridge_d) * 0.35, shadow_skin * 0.9)
    tip_r = nose_w * p["nose_tip"]
    tip_d = face.ellipse(tip_x, tip_y, tip_r * (1.0 + 0.8 * tip_squash) * 0.55, tip_r)
    face.paint(face.alpha(tip_d) * 0.55, shadow_skin)
    highlight_d = face.ellipse(tip_x, tip_y - nose_w * 0.2, nose_w * 0.4, nose_w * 0.35)
    face.paint(face.alpha(highlight_d) * 0.6, (skin * 1.08).clamp(max=1.0))
    for side in (-1.0, 1.0):
        nostril = face.ellipse(
            tip_x + side * nose_w * 0.55 * tip_squash,
            tip_y + nose_w * 0.3,
            nose_w * p["nostril_size"],
            nose_w * p["nostril_size"] * 0.65,
        )
        face.paint(face.alpha(nostril) * 0.85, outline * 0.7)

    # Facial hair, part of the identity: a beard over the jaw up to the sideburns, and a moustache.
    half_w = p["mouth_width"] * mouth_squash * (1.0 + 0.12 * n["smile"])
    smile_bend = -0.045 * (n["smile"] + 0.7 * p["mouth_corners"])
    opening = 0.075 * n["mouth_open"]
    lip_t = p["lip_thickness"]
    facial_hair = brow * 0.85 + skin * 0.15
    beard_density = col((p["facial_hair"] > 0.8).float() * (0.5 + 2.0 * (p["facial_hair"] - 0.8)))
    from_mouth = ((face.xp - col(mouth_x * face.inv_pixel)) / col(head_w * face.inv_pixel)).square_()
    beard_top = (
        col((mouth_y - 0.02) * face.inv_pixel) - col(0.6 * head_h * face.inv_pixel) * from_mouth.square()
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
    face.paint(face.alpha(moustache) * col((p["facial_hair"] > 0.6).float()), facial_hair)

    # Mouth: dark opening (with teeth) between two lips bent by the smile.
    lips = palette(p["lip_redness"], LIP) * (0.55 + 0.45 * skin)
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
        lip_t * p["upper_lip"] + 0.007,
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
    face.paint(face.alpha(seam) * col((n["mouth_open"] < 0.15).float()) * 0.8, lips * 0.35)

    # Folds from the nose to the mouth corners, and a cleft chin.
    for side in (-1.0, 1.0):
        fold_x, fold_y, _ = project(side * (nose_w / head_w + 0.22), (tip_v + mouth_v) * 0.5 + 0.02)
        fold = face.curve(fold_x, fold_y, 0.03 + 0.1 * nose_w, zeros, side * 1.5, ones * 0.007, taper=0.8)
        face.paint(face.alpha(fold) * on_skin * col(0.45 * p["nasolabial"]), shadow_skin * 0.8)
    chin_x, chin_y, _ = project(zeros, ones * (0.93 + p["chin_length"]))
    cleft = face.ellipse(chin_x, chin_y - 0.035, ones * 0.007, ones * 0.03)
    face.paint(face.alpha(cleft) * on_skin * col((p["chin_cleft"] > 0.6).float() * 0.7), shadow_skin * 0.75)

    # Freckles over the nose and cheeks, their number and places part of the identity; then moles.
    density = ((p["freckles"] - 0.5) * 2.0).clamp(min=0.0)
    spots_u = pattern(p["freckle_pattern"], _FRECKLES, 0.0) * 1.1 - 0.55
    spots_v = pattern(p["freckle_pattern"], _FRECKLES, 3.7) * 0.35 + 0.05
    freckle = outline * 0.4 + skin * 0.5
    for k in range(_FRECKLES):
        fx, fy, _ = project(spots_u[:, k], spots_v[:, k])
        present = col(((k + 0.5) / _FRECKLES < density).float())
        dot = face.alpha(face.ellipse(fx, fy, ones * 0.011, ones * 0.011))
        face.paint(dot * present * on_skin * 0.7, freckle)
    for present, u, v in (
        (p["mole_present"] > 0.5, p["mole_u"], p["mole_v"]),
        (p["second_mole"] > 0.6, p["second_mole_u"], p["second_mole_v"]),
    ):
        mole_x, mole_y, _ = project(u, v)
        mole_alpha = face.alpha(face.ellipse(mole_x, mole_y, p["mole_size"], p["mole_size"]))
        face.paint(mole_alpha * col(present.float()) * on_skin, outline * 0.5)

    # Lighting: Lambertian shading from the head's ellipsoid normal, on the face only.
    nx = ((x - col(head_x)) / col(head_w)).clamp_(-1, 1)
    ny = ((y - col(head_y)) / col(head_h)).clamp_(-1, 1)
    nz = (1.0 - nx * nx - ny * ny).clamp_(min=0.0).sqrt_()
    azimuth, elevation = math.pi * n["light_azimuth"], 0.25 + 1.2 * n["light_elevation"]
    lx = torch.sin(azimuth) * torch.cos(elevation)
    ly = -torch.cos(azimuth) * torch.cos(elevation) * 0.6
    lz = torch.sin(elevation)
    lambert = (col(lx) * nx + col(ly) * ny + col(lz) * nz).clamp_(min=0.0)
    strength = col(0.5 * n["light_strength"])
    shading = (1.0 - strength) + (strength * 1.25) * lambert
    canvas.mul_(1.0 + head_alpha[:, None] * (shading[:, None] - 1.0))

    # Hair on top: the cap, cut off below a hairline that drops at the temples.
    # The hairline is placed relative to the brows, so a fringe never hides them.
    hairline_top = brow_top - 0.04 - 0.22 * (1.0 - n["hairline"])
    across = (x - col(hair_x)) / col(head_w)
    across_sq = across * across
    temple_drop = col(head_h * 0.7 * (1 - 0.5 * n["hair_volume"]))
    hairline_y = (
        col(hairline_top) + temple_drop * across_sq * across_sq + 0.08 * col(n["hair_part"]) * across
    )
    hair_d = torch.maximum(cap_d, (y - hairline_y) * col(paint.inv_pixel))
    paint.paint(paint.alpha(hair_d) * has_hair, hair)

    # Glasses: two rims, a bridge and a tint, over everything on the face.
    has_glasses = col(n["glasses"])
    rim = 0.45 + 0.008 * paint.inv_pixel  # half-thickness in pixels: visible at 32 px, thin at 256
    frame = solid(0.08, 0.08, 0.08)
    for ex, ey, squash in eyes:
        lens = face.ellipse(ex, ey, lens_rx * squash, lens_rx * 0.78)
        tint = face.alpha(lens) * has_glasses * col(0.15 + 0.6 * n["glasses_tint"] ** 2)
        face.paint(tint, solid(0.1, 0.1, 0.12))
        face.paint(face.alpha(lens.abs_() - col(rim)) * has_glasses, frame)
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
