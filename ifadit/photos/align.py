"""FFHQ alignment and paste-back: 5 landmarks -> FFHQ's oriented square (quad) -> aligned crop at the model's
resolution, and the inverse warp of a generated crop back into the photo.

The crop is FFHQ's (Karras et al. 2019, ``recreate_aligned_images`` in the FFHQ dataset tools): from the eye
centres and mouth corners, ``x = eye_to_eye - rot90(eye_to_mouth)`` normalised and scaled by
``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)``, ``y = rot90(x)``, centre ``c = eye_avg + 0.1 eye_to_mouth``,
corners ``c -+ x -+ y``. The model sees faces where it saw them in training (FFHQ, or photos aligned by
``ifadit align``), not a mean-face template's approximation of them.

Pixels are sampled as FFHQ samples them: warped bilinearly at a multiple of the output size, then reduced with
an antialiasing filter (FFHQ warps at 4096 px and reduces to 1024 with Lanczos; twice the size and a bicubic
reduction come within one grey level of that on average). A face larger than that working size is first shrunk
with an antialiasing filter (``warp_affine`` alone would alias it). Where the square reaches past the photo,
the photo is padded, blurred towards its edge and faded to its median colour. FFHQ pads by reflection before
that blur; here the edge pixels are replicated instead, so a face at the edge of a photo is not mirrored
into a second face.

Image geometry is kornia's (``get_perspective_transform``, ``warp_affine``, ``invert_affine_transform``,
``gaussian_blur2d``). Pixel coordinates follow its ``align_corners=True`` convention (pixel ``i`` has its
centre at coordinate ``i``), which is also how MTCNN reports landmarks; FFHQ's ``quad + 0.5`` is the same
convention in PIL's terms. The image -> crop map of each face is one affine matrix: cropping and paste-back
both use it, so a face returns exactly where it came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

# A face-parsing hook: aligned crops (B, 3, S, S) in [-1, 1] -> soft masks (B, 1, S, S) in [0, 1].
MaskFn = Callable[[Tensor], Tensor]


def _check_landmarks(landmarks: Tensor) -> None:
    if landmarks.dim() != 3 or landmarks.shape[1:] != (5, 2):
        raise ValueError(f"expected 5 landmarks per face, shape (B, 5, 2), got {tuple(landmarks.shape)}")


def ffhq_quads(landmarks: Tensor) -> Tensor:
    """FFHQ's crop square for each face's 5 landmarks (B, 5, 2) (eyes, nose, mouth corners; the nose is not
    used): corners (B, 4, 2) in FFHQ's order top-left, bottom-left, bottom-right, top-right, in float64."""
    _check_landmarks(landmarks)
    lm = landmarks.double()
    eye_avg = (lm[:, 0] + lm[:, 1]) / 2
    eye_to_eye = lm[:, 1] - lm[:, 0]
    eye_to_mouth = (lm[:, 3] + lm[:, 4]) / 2 - eye_avg
    # flipud(v) * [-1, 1] of FFHQ is v turned by 90 degrees: (-v_y, v_x)
    x = eye_to_eye - torch.stack([-eye_to_mouth[:, 1], eye_to_mouth[:, 0]], dim=-1)
    half = torch.maximum(eye_to_eye.norm(dim=-1) * 2.0, eye_to_mouth.norm(dim=-1) * 1.8)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * half.unsqueeze(-1)
    y = torch.stack([-x[:, 1], x[:, 0]], dim=-1)
    c = eye_avg + eye_to_mouth * 0.1
    return torch.stack([c - x - y, c - x + y, c + x + y, c + x - y], dim=1)


def crop_corners(size: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The outer corners of a ``size`` x ``size`` crop in pixel-centre coordinates, in the quad's order."""
    lo, hi = -0.5, size - 0.5
    return torch.tensor([[lo, lo], [lo, hi], [hi, hi], [hi, lo]], dtype=dtype)


def quad_matrices(quads: Tensor, size: int) -> Tensor:
    """Image -> crop affine maps (B, 2, 3) that send each quad (B, 4, 2) onto the crop's outer corners."""
    dst = crop_corners(size).to(quads.device).expand(quads.shape[0], -1, -1)
    homography = kornia.geometry.transform.get_perspective_transform(quads.double(), dst)
    # a square onto a square: the homography is an affine map (its last row is [0, 0, 1] up to rounding)
    return (homography[:, :2] / homography[:, 2:, 2:]).float()


def alignment_matrices(landmarks: Tensor, size: int) -> Tensor:
    """Image -> crop maps (B, 2, 3) of FFHQ's alignment at ``size`` px from 5 landmarks per face (B, 5, 2)."""
    return quad_matrices(ffhq_quads(landmarks), size)


def apply_affine(matrix: Tensor, points: Tensor) -> Tensor:
    """Points (B, N, 2) through affine maps (B, 2, 3)."""
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, :, 2].unsqueeze(1)


def _as3x3(matrix: Tensor) -> Tensor:
    bottom = torch.tensor([[0.0, 0.0, 1.0]], dtype=matrix.dtype, device=matrix.device)
    return torch.cat([matrix, bottom], dim=0)


def blurred_edge_pad(image: Tensor, pads: tuple[int, int, int, int], qsize: float) -> Tensor:
    """``image`` (C, H, W) padded by ``pads`` (left, top, right, bottom) pixels as FFHQ pads: the edge
    pixels carried outwards, Gaussian-blurred (sigma ``0.02 qsize``) more strongly towards the outer edge, and
    faded to the image's median colour there. ``qsize``: the crop square's side in these pixels."""
    left, top, right, bottom = pads
    padded = F.pad(image.unsqueeze(0), (left, right, top, bottom), mode="replicate")
    _, _, height, width = padded.shape
    ys = torch.arange(height, dtype=image.dtype, device=image.device).view(-1, 1)
    xs = torch.arange(width, dtype=image.dtype, device=image.device).view(1, -1)
    # 1 at the outer edge, 0 at the photo's own edge, negative inside (FFHQ's mask)
    along_x = 1.0 - torch.minimum(xs / max(left, 1), (width - 1 - xs) / max(right, 1))
    along_y = 1.0 - torch.minimum(ys / max(top, 1), (height - 1 - ys) / max(bottom, 1))
    mask = torch.maximum(along_x, along_y)
    sigma = max(qsize * 0.02, 0.5)
    kernel = 2 * math.ceil(3 * sigma) + 1
    blurred = kornia.filters.gaussian_blur2d(
        padded, (kernel, kernel), (sigma, sigma), border_type="replicate"
    )
    padded = padded + (blurred - padded) * (mask * 3.0 + 1.0).clamp(0, 1)
    median = padded.flatten(2).median(dim=-1).values.view(1, -1, 1, 1)
    padded = padded + (median - padded) * mask.clamp(0, 1)
    return padded[0]


SUPERSAMPLE = 2  # crops are warped at this multiple of their size, then reduced with an antialiasing filter


def _crop_one(image: Tensor, matrix: Tensor, size: int) -> Tensor:
    """One face's crop at ``size`` px under the image -> crop map ``matrix`` (2, 3), as FFHQ samples it: the
    face region cut out, shrunk to about the crop's scale, padded with a blurred edge, warped."""
    _, height, width = image.shape
    m = _as3x3(matrix.double().cpu())
    to_image = torch.linalg.inv(m)
    quad = crop_corners(size) @ to_image[:2, :2].T + to_image[:2, 2]
    qsize = float(size / math.sqrt(abs(torch.linalg.det(m[:2, :2]).item())))  # the square's side in pixels
    border = max(round(qsize * 0.1), 3)
    x0 = min(max(math.floor(quad[:, 0].min().item()) - border, 0), width - 1)
    y0 = min(max(math.floor(quad[:, 1].min().item()) - border, 0), height - 1)
    x1 = max(min(math.ceil(quad[:, 0].max().item()) + border + 1, width), x0 + 1)
    y1 = max(min(math.ceil(quad[:, 1].max().item()) + border + 1, height), y0 + 1)
    region = image[:, y0:y1, x0:x1]
    # image pixel-centre coordinates -> region coordinates: shift, then (if shrunk) scale about pixel edges
    to_buffer = torch.tensor([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    shrink = qsize / size
    if shrink > 1.0:
        new_h, new_w = max(round((y1 - y0) / shrink), 1), max(round((x1 - x0) / shrink), 1)
        sy, sx = new_h / (y1 - y0), new_w / (x1 - x0)
        region = F.interpolate(
            region.unsqueeze(0), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )[0]
        scale = torch.tensor(
            [[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64
        )
        to_buffer = scale @ to_buffer
        qsize = qsize * (sx + sy) / 2
    # FFHQ's padding rule, in the (shrunk) region's pixels
    quad_b = quad @ to_buffer[:2, :2].T + to_buffer[:2, 2]
    border = max(round(qsize * 0.1), 3)
    _, h_b, w_b = region.shape
    pads = (
        max(-math.floor(quad_b[:, 0].min().item()) + border, 0),
        max(-math.floor(quad_b[:, 1].min().item()) + border, 0),
        max(math.ceil(quad_b[:, 0].max().item()) - w_b + border, 0),
        max(math.ceil(quad_b[:, 1].max().item()) - h_b + border, 0),
    )
    if max(pads) > border - 4:
        least = round(qsize * 0.3)
        pads = tuple(max(p, least) for p in pads)  # type: ignore[assignment]
        region = blurred_edge_pad(region, pads, qsize)
        to_buffer = (
            torch.tensor([[1.0, 0.0, pads[0]], [0.0, 1.0, pads[1]], [0.0, 0.0, 1.0]], dtype=torch.float64)
            @ to_buffer
        )
    buffer_to_crop = (m @ torch.linalg.inv(to_buffer))[:2]
    return kornia.geometry.transform.warp_affine(
        region.unsqueeze(0),
        buffer_to_crop.to(image.device, image.dtype).unsqueeze(0),
        (size, size),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )[0]


def crop_faces(image: Tensor, matrices: Tensor, size: int) -> Tensor:
    """Aligned crops (B, C, size, size) of one image (C, H, W) under the image -> crop maps (B, 2, 3).

    Each face is cut out, shrunk with an antialiasing filter when it is larger than the working size,
    padded with FFHQ's blurred edge where its square leaves the photo, warped at twice ``size`` and reduced
    (see the module's docstring)."""
    if image.dim() != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(image.shape)}")
    if matrices.shape[0] == 0:
        return image.new_zeros((0, image.shape[0], size, size))
    work = size * SUPERSAMPLE
    # the same map at the working size: pixel edges scale, pixel centres shift by half a pixel
    upscale = torch.tensor(
        [[SUPERSAMPLE, 0.0, (SUPERSAMPLE - 1) / 2], [0.0, SUPERSAMPLE, (SUPERSAMPLE - 1) / 2]],
        dtype=torch.float64,
    )
    large = torch.stack([_crop_one(image, upscale @ _as3x3(m.double().cpu()), work) for m in matrices])
    crops = F.interpolate(large, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return crops.clamp(-1.0, 1.0)  # bicubic overshoots; images are in [-1, 1]


def ellipse_masks(landmarks_in_crop: Tensor, size: int, feather: float = 0.0) -> Tensor:
    """Ellipses over the face, one per face, from its landmarks in crop pixels (B, 5, 2): (B, 1, S, S).

    The face region where no face parser is configured: about one eye distance each side of the face's
    centre line, from above the brows to below the chin. ``feather`` > 0 lets the outer part of the radius
    fall smoothly (smoothstep) to 0; the paste mask's erosion and blur (:mod:`ifadit.photos.blend`) soften
    the default hard ellipse instead."""
    lm = landmarks_in_crop.float()
    eyes = (lm[:, 0] + lm[:, 1]) / 2
    mouth = (lm[:, 3] + lm[:, 4]) / 2
    eye_dist = (lm[:, 1] - lm[:, 0]).norm(dim=-1)
    down = mouth - eyes
    length = down.norm(dim=-1).clamp_min(1e-6)
    axis_v = down / length.unsqueeze(-1)  # points from the eyes to the mouth
    axis_u = torch.stack([axis_v[:, 1], -axis_v[:, 0]], dim=-1)
    top = eyes - axis_v * (0.9 * eye_dist).unsqueeze(-1)
    bottom = mouth + axis_v * (0.8 * length).unsqueeze(-1)
    center = (top + bottom) / 2
    semi_v = (bottom - top).norm(dim=-1) / 2
    semi_u = 1.05 * eye_dist
    coords = torch.arange(size, dtype=torch.float32, device=lm.device)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).view(1, size, size, 2) - center.view(-1, 1, 1, 2)
    u = (grid * axis_u.view(-1, 1, 1, 2)).sum(-1) / semi_u.view(-1, 1, 1)
    v = (grid * axis_v.view(-1, 1, 1, 2)).sum(-1) / semi_v.view(-1, 1, 1)
    radius = torch.sqrt(u * u + v * v)
    if feather <= 0:
        return (radius <= 1.0).float().unsqueeze(1)
    t = ((1.0 - radius) / feather).clamp(0, 1)
    return (t * t * (3 - 2 * t)).unsqueeze(1)


@dataclass
class PasteRegion:
    """Where one face's warped crop lands in the photo: rows y0:y1, columns x0:x1."""

    x0: int
    y0: int
    x1: int
    y1: int


def paste_region(matrix: Tensor, size: int, height: int, width: int) -> PasteRegion | None:
    """The photo rectangle covered by a crop under the image -> crop map ``matrix`` (2, 3), clipped to the
    photo; None when it lies outside."""
    inverse = kornia.geometry.transform.invert_affine_transform(matrix.unsqueeze(0).double())
    pts = apply_affine(inverse, crop_corners(size).unsqueeze(0))[0]
    x0 = max(int(torch.floor(pts[:, 0].min())) - 1, 0)
    y0 = max(int(torch.floor(pts[:, 1].min())) - 1, 0)
    x1 = min(int(torch.ceil(pts[:, 0].max())) + 2, width)
    y1 = min(int(torch.ceil(pts[:, 1].max())) + 2, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return PasteRegion(x0, y0, x1, y1)


def warp_back(crops: Tensor, matrix: Tensor, region: PasteRegion) -> Tensor:
    """Crops (N, C, S, S) of one face (image, mask, ...) warped back into the photo rectangle ``region``
    under the image -> crop map ``matrix`` (2, 3); zero outside the crop."""
    crop_to_image = kornia.geometry.transform.invert_affine_transform(matrix.unsqueeze(0).double())
    shift = torch.tensor(
        [[[1.0, 0.0, -region.x0], [0.0, 1.0, -region.y0], [0.0, 0.0, 1.0]]], dtype=torch.float64
    )
    full = torch.cat([crop_to_image, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64)], dim=1)
    to_region = (shift @ full)[:, :2].to(crops.device, crops.dtype).expand(crops.shape[0], -1, -1)
    return kornia.geometry.transform.warp_affine(
        crops,
        to_region,
        (region.y1 - region.y0, region.x1 - region.x0),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )


def paste_faces(
    photo: Tensor, faces: Tensor, masks: Tensor, matrices: Tensor, in_place: bool = False
) -> tuple[Tensor, Tensor]:
    """Blend generated crops into a photo: ``photo`` (C, H, W), ``faces`` (B, C, S, S), ``masks``
    (B, 1, S, S), ``matrices`` (B, 2, 3) image -> crop. Faces are pasted in order, each over the result of
    the previous ones. Returns the new photo and the union paste mask (1, H, W) in photo pixels: where it is
    0 the photo is returned unchanged, bit for bit. ``in_place`` pastes into ``photo`` itself (no copy of a
    large photo) when its caller owns it."""
    out = photo if in_place else photo.clone()
    union = torch.zeros((1, *photo.shape[-2:]), dtype=photo.dtype, device=photo.device)
    size = faces.shape[-1]
    for face, mask, matrix in zip(faces, masks, matrices, strict=True):
        region = paste_region(matrix.cpu(), size, photo.shape[-2], photo.shape[-1])
        if region is None:
            continue
        warped = warp_back(torch.cat([face, mask], dim=0).unsqueeze(0), matrix, region)[0]
        face_r, mask_r = warped[:-1], warped[-1:].clamp(0, 1)
        rows, cols = slice(region.y0, region.y1), slice(region.x0, region.x1)
        base = out[:, rows, cols]
        blended = mask_r * face_r + (1 - mask_r) * base
        out[:, rows, cols] = torch.where(mask_r > 0, blended, base)
        union[:, rows, cols] = torch.maximum(union[:, rows, cols], mask_r)
    return out, union


__all__ = [
    "MaskFn",
    "PasteRegion",
    "alignment_matrices",
    "apply_affine",
    "blurred_edge_pad",
    "crop_corners",
    "crop_faces",
    "ellipse_masks",
    "ffhq_quads",
    "paste_faces",
    "paste_region",
    "quad_matrices",
    "warp_back",
]
