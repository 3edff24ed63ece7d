"""Blending a generated face into its input, as the paper's pipeline does before recovery.

The official iFADIT code pastes every generated face into the input under its face mask, eroded with a 5 x 5
kernel and then Gaussian-blurred with a 15 x 15 kernel at 256 px (OpenCV's ``erode`` and ``GaussianBlur``,
whose sigma for a 15-pixel kernel is 2.6), and recovers from that blend. The face mask comes from a face
parser where one is configured, else from a landmark ellipse. Kernel sizes scale with the crop's resolution.
Without a parser, the landmark ellipse is joined with the detected face box, widened to the forehead and
past the jaw (:func:`box_quads`): an ellipse alone leaves the jaw, and where the photo's edge cuts a face and
its landmarks are guessed, an eye or half the mouth, as they were.

Everything here works on aligned crops (B, C, S, S); :func:`ifadit.photos.align.paste_faces` carries the
blended crops back into the photo under the same masks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ifadit.photos.align import MaskFn, ellipse_masks

ERODE_AT_256 = 5  # the official pipeline's erosion kernel at 256 px
BLUR_AT_256 = 15  # its Gaussian kernel at 256 px
SIGMA_AT_256 = 0.3 * ((BLUR_AT_256 - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for that kernel: 2.6


def _odd(value: float, least: int) -> int:
    n = max(round(value), least)
    return n if n % 2 else n + 1


def mask_kernels(size: int) -> tuple[int, int, float]:
    """Erosion kernel, blur kernel and blur sigma at ``size`` px: the official 5, 15 and 2.6 at 256 px."""
    scale = size / 256
    return _odd(ERODE_AT_256 * scale, 1), _odd(BLUR_AT_256 * scale, 3), SIGMA_AT_256 * scale


def soften_masks(masks: Tensor) -> Tensor:
    """Face masks (B, 1, S, S) in [0, 1] -> paste masks: eroded, then Gaussian-blurred (kornia), and exactly
    0 on a ring along the crop's border, so the paste leaves no seam where the crop ends and every photo pixel
    outside the blurred region keeps its value bit for bit."""
    import kornia

    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"expected masks (B, 1, S, S), got shape {tuple(masks.shape)}")
    size = masks.shape[-1]
    erode, blur, sigma = mask_kernels(size)
    ring = blur // 2 + 1
    inner = torch.zeros_like(masks)
    inner[..., ring:-ring, ring:-ring] = masks[..., ring:-ring, ring:-ring].clamp(0, 1)
    if erode > 1:
        kernel = torch.ones(erode, erode, dtype=masks.dtype, device=masks.device)
        inner = kornia.morphology.erosion(inner, kernel)
    return kornia.filters.gaussian_blur2d(inner, (blur, blur), (sigma, sigma), border_type="constant").clamp(
        0, 1
    )


# How far the face mask reaches past MTCNN's box (which spans about brows to chin), as shares of its side.
BOX_GROW = {"top": 0.3, "bottom": 0.1, "sides": 0.1}


def box_quads(boxes: Tensor) -> Tensor:
    """Detected face boxes (B, 4) as x0, y0, x1, y1 photo pixels -> the corners (B, 4, 2) of the face
    region the mask covers: the box widened by ``BOX_GROW`` (forehead above, jaw below)."""
    x0, y0, x1, y1 = boxes.double().unbind(-1)
    w, h = x1 - x0, y1 - y0
    left, right = x0 - BOX_GROW["sides"] * w, x1 + BOX_GROW["sides"] * w
    top, bottom = y0 - BOX_GROW["top"] * h, y1 + BOX_GROW["bottom"] * h
    corners = [(left, top), (left, bottom), (right, bottom), (right, top)]
    return torch.stack([torch.stack(c, dim=-1) for c in corners], dim=1).float()


def quad_masks(quads: Tensor, size: int) -> Tensor:
    """Convex quadrilaterals (B, 4, 2) in crop pixels, filled: (B, 1, S, S) of 0 and 1. A pixel is inside
    when it lies on the inner side of all four edges (a few lines of half-plane tests; kornia fills no
    polygons)."""
    coords = torch.arange(size, dtype=torch.float32, device=quads.device)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    q = quads.float()
    nxt = q.roll(-1, dims=1)
    # the sign of the cross product (edge) x (pixel - edge start), one per edge; inside: all the same sign
    cross = (nxt[:, :, 0] - q[:, :, 0]).view(-1, 4, 1, 1) * (gy - q[:, :, 1].view(-1, 4, 1, 1)) - (
        nxt[:, :, 1] - q[:, :, 1]
    ).view(-1, 4, 1, 1) * (gx - q[:, :, 0].view(-1, 4, 1, 1))
    inside = (cross >= 0).all(dim=1) | (cross <= 0).all(dim=1)
    return inside.float().unsqueeze(1)


def face_masks(
    crops: Tensor,
    landmarks_in_crop: Tensor,
    mask_fn: MaskFn | None = None,
    quads_in_crop: Tensor | None = None,
) -> Tensor:
    """The face region of each aligned crop (B, 1, S, S) in [0, 1]: the face parser's mask where ``mask_fn``
    is given (a parser outlines the whole face itself), else the landmark ellipse (landmarks in crop pixels,
    (B, 5, 2)) joined with the widened face box where ``quads_in_crop`` (B, 4, 2; :func:`box_quads` mapped
    into the crop) is given."""
    size = crops.shape[-1]
    if mask_fn is None:
        masks = ellipse_masks(landmarks_in_crop, size).to(crops.device, crops.dtype)
    else:
        masks = mask_fn(crops)
        if masks.shape != (crops.shape[0], 1, size, size):
            raise ValueError(
                f"the face parser returned masks of shape {tuple(masks.shape)}, expected "
                f"{(crops.shape[0], 1, size, size)}"
            )
        return masks.to(crops.device, crops.dtype).clamp(0, 1)
    if quads_in_crop is not None:
        masks = torch.maximum(masks, quad_masks(quads_in_crop, size).to(masks.device, masks.dtype))
    return masks


def paste_masks(
    crops: Tensor,
    landmarks_in_crop: Tensor,
    mask_fn: MaskFn | None = None,
    quads_in_crop: Tensor | None = None,
) -> Tensor:
    """The paste mask of each aligned crop: its face mask (:func:`face_masks`), softened as the paper's
    pipeline softens it (:func:`soften_masks`)."""
    return soften_masks(face_masks(crops, landmarks_in_crop, mask_fn, quads_in_crop))


BLUR_GROW = 0.25  # a blurred region reaches this share of the face box's side past each side of the box
BLUR_BLOCKS = 5  # ... and keeps no more detail than this many blocks across it


def blur_regions(photo: Tensor, boxes: Tensor, changed: Tensor) -> None:
    """Faces the model cannot process (too small, or regions the detector is unsure about) made
    unrecognisable, in place: in ``photo`` (C, H, W) each box (N, 4; x0, y0, x1, y1 photo pixels), widened
    by ``BLUR_GROW``, is reduced to ``BLUR_BLOCKS`` blocks across (an area average) and smoothly enlarged
    back, and ``changed`` (1, H, W) is set to 1 there. In place: no copy of a large photo."""
    import torch.nn.functional as F

    out = photo
    height, width = photo.shape[-2:]
    for x0, y0, x1, y1 in boxes.tolist():
        gx, gy = BLUR_GROW * (x1 - x0), BLUR_GROW * (y1 - y0)
        left, top = max(int(x0 - gx), 0), max(int(y0 - gy), 0)
        right, bottom = min(int(x1 + gx) + 1, width), min(int(y1 + gy) + 1, height)
        if right <= left or bottom <= top:
            continue
        patch = out[:, top:bottom, left:right].unsqueeze(0)
        small = F.adaptive_avg_pool2d(patch, (min(BLUR_BLOCKS, bottom - top), min(BLUR_BLOCKS, right - left)))
        smooth = F.interpolate(small, size=patch.shape[-2:], mode="bilinear", align_corners=False)
        out[:, top:bottom, left:right] = smooth[0]
        changed[:, top:bottom, left:right] = 1.0


def blend(generated: Tensor, original: Tensor, masks: Tensor) -> Tensor:
    """``masks * generated + (1 - masks) * original``: the generated face inside, the input around it."""
    return masks * generated + (1 - masks) * original


def masked_psnr(image: Tensor, target: Tensor, region: Tensor) -> Tensor:
    """PSNR in dB of images in [-1, 1] (B, C, S, S) over the pixels where ``region`` (B, 1, S, S) > 0.5, one
    value per image: the face-region PSNR the benchmarks report (torchmetrics' PSNR takes no mask)."""
    weight = (region > 0.5).to(image.dtype).expand_as(image)
    error = ((image - target) ** 2 * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(4.0 / error.clamp_min(1e-12))  # peak-to-peak 2 in [-1, 1]


__all__ = [
    "BOX_GROW",
    "blend",
    "blur_regions",
    "box_quads",
    "face_masks",
    "mask_kernels",
    "masked_psnr",
    "paste_masks",
    "quad_masks",
    "soften_masks",
]
