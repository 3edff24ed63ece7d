"""Blending a generated face into its input, as the paper's pipeline does before recovery.

The official iFADIT code pastes every generated face into the input under its face mask, eroded with a 5 x 5
kernel and then Gaussian-blurred with a 15 x 15 kernel at 256 px (OpenCV's ``erode`` and ``GaussianBlur``,
whose sigma for a 15-pixel kernel is 2.6), and recovers from that blend. The face mask comes from a face
parser where one is configured, else from a landmark ellipse. Kernel sizes scale with the crop's resolution.

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


def face_masks(crops: Tensor, landmarks_in_crop: Tensor, mask_fn: MaskFn | None = None) -> Tensor:
    """The face region of each aligned crop (B, 1, S, S) in [0, 1]: the face parser's mask where ``mask_fn``
    is given, else the landmark ellipse (landmarks in crop pixels, (B, 5, 2))."""
    size = crops.shape[-1]
    if mask_fn is None:
        return ellipse_masks(landmarks_in_crop, size).to(crops.device, crops.dtype)
    masks = mask_fn(crops)
    if masks.shape != (crops.shape[0], 1, size, size):
        raise ValueError(
            f"the face parser returned masks of shape {tuple(masks.shape)}, expected "
            f"{(crops.shape[0], 1, size, size)}"
        )
    return masks.to(crops.device, crops.dtype).clamp(0, 1)


def paste_masks(crops: Tensor, landmarks_in_crop: Tensor, mask_fn: MaskFn | None = None) -> Tensor:
    """The paste mask of each aligned crop: its face mask (:func:`face_masks`), softened as the paper's
    pipeline softens it (:func:`soften_masks`)."""
    return soften_masks(face_masks(crops, landmarks_in_crop, mask_fn))


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
    "blend",
    "face_masks",
    "mask_kernels",
    "masked_psnr",
    "paste_masks",
    "soften_masks",
]
