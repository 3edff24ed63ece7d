"""Face alignment and paste-back: 5 landmarks -> similarity to an FFHQ-style template -> aligned crop at the
model's resolution, and the inverse warp of a generated crop back into the photo under a feathered mask.

Image geometry is kornia's (``warp_affine``, ``invert_affine_transform``); pixel coordinates follow its
``align_corners=True`` convention (pixel ``i`` has its centre at coordinate ``i``), which is also how MTCNN
reports boxes and landmarks. Only the 4-parameter least-squares similarity fit is written here: kornia 0.9
estimates full affine maps (``find_affine``, 6 parameters) and homographies, but has no similarity estimator,
and a free affine fit to 5 noisy landmarks shears and squashes faces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import kornia
import torch
from torch import Tensor

# The 5-point mean face (eyes, nose tip, mouth corners) in a 112x112 crop, as published with ArcFace
# (InsightFace's reference points); only its proportions are used here.
MEAN_FACE_5 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

# A face-parsing hook: aligned crops (B, 3, S, S) in [-1, 1] -> soft masks (B, 1, S, S) in [0, 1].
MaskFn = Callable[[Tensor], Tensor]


def ffhq_template(mean_face: tuple[tuple[float, float], ...] = MEAN_FACE_5) -> Tensor:
    """The 5 landmarks of ``mean_face`` in the unit square of an FFHQ-style crop, shape (5, 2).

    FFHQ's crop rule (Karras et al. 2019, dataset alignment): centre ``c = eye_avg + 0.1 * eye_to_mouth``,
    half-side ``max(2 * |eye_to_eye|, 1.8 * |eye_to_mouth|)`` along the eye line. It is applied to the mean
    face once, so every face is then aligned to where FFHQ would have put the mean face.
    """
    p = torch.tensor(mean_face, dtype=torch.float64)
    eye_avg = (p[0] + p[1]) / 2
    mouth_avg = (p[3] + p[4]) / 2
    eye_to_eye = p[1] - p[0]
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - torch.stack([-eye_to_mouth[1], eye_to_mouth[0]])
    x = x / x.norm()
    half = max(2.0 * eye_to_eye.norm().item(), 1.8 * eye_to_mouth.norm().item())
    x = x * half
    y = torch.stack([-x[1], x[0]])
    center = eye_avg + 0.1 * eye_to_mouth
    origin = center - x - y  # the crop's top-left corner
    # coordinates along the crop's axes, in units of its side (2 * half)
    rel = p - origin
    u = (rel @ x) / (2 * half * half)
    v = (rel @ y) / (2 * half * half)
    return torch.stack([u, v], dim=1).float()


def template_pixels(size: int, template: Tensor | None = None) -> Tensor:
    """The template in pixel coordinates of a ``size`` x ``size`` crop (pixel centres at integers)."""
    unit = ffhq_template() if template is None else template
    return unit * size - 0.5


def estimate_similarity(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) with ``dst ~ T(src)``.

    ``src``, ``dst``: (B, N, 2) with N >= 2. Returns (B, 2, 3). The similarity ``[[a, -b, tx], [b, a, ty]]``
    is linear in (a, b, tx, ty), so the fit is one small linear least-squares solve per face — the same
    optimum as Umeyama's SVD solution without reflections. Solved in float64: pixel coordinates of large
    photos lose digits in float32 normal equations.
    """
    if src.shape != dst.shape or src.dim() != 3 or src.shape[-1] != 2 or src.shape[1] < 2:
        raise ValueError(
            f"expected matching (B, N>=2, 2) point sets, got {tuple(src.shape)}, {tuple(dst.shape)}"
        )
    s, d = src.double(), dst.double()
    x, y = s[..., 0], s[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, -y, one, zero], dim=-1)  # u = a x - b y + tx
    rows_v = torch.stack([y, x, zero, one], dim=-1)  # v = b x + a y + ty
    design = torch.cat([rows_u, rows_v], dim=1)  # (B, 2N, 4)
    target = torch.cat([d[..., 0], d[..., 1]], dim=1).unsqueeze(-1)  # (B, 2N, 1)
    a, b, tx, ty = torch.linalg.lstsq(design, target).solution.squeeze(-1).unbind(-1)
    matrix = torch.stack([torch.stack([a, -b, tx], -1), torch.stack([b, a, ty], -1)], dim=1)
    return matrix.to(src.dtype if src.is_floating_point() else torch.float32)


def apply_affine(matrix: Tensor, points: Tensor) -> Tensor:
    """Points (B, N, 2) through affine maps (B, 2, 3)."""
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, :, 2].unsqueeze(1)


def alignment_matrices(landmarks: Tensor, size: int) -> Tensor:
    """Image -> crop similarity for each face's 5 landmarks (B, 5, 2): (B, 2, 3)."""
    dst = template_pixels(size).to(landmarks.device).expand_as(landmarks)
    return estimate_similarity(landmarks.float(), dst.float())


def crop_faces(image: Tensor, matrices: Tensor, size: int) -> Tensor:
    """Aligned crops (B, C, size, size) of one image (C, H, W) under the image -> crop maps (B, 2, 3).

    Border pixels are reflected, so a face at the edge of a photo gives the encoders a plausible frame
    rather than black bars."""
    batch = matrices.shape[0]
    src = image.unsqueeze(0).expand(batch, -1, -1, -1)
    return kornia.geometry.transform.warp_affine(
        src,
        matrices.to(image.dtype),
        (size, size),
        mode="bilinear",
        padding_mode="reflection",
        align_corners=True,
    )


def ellipse_masks(landmarks_in_crop: Tensor, size: int, feather: float = 0.25) -> Tensor:
    """Soft ellipses over the face, one per face, from its landmarks in crop pixels (B, 5, 2): (B, 1, S, S).

    The ellipse spans about one eye distance each side of the face's centre line and from above the brows
    to below the chin; the outer ``feather`` of its radius falls smoothly (smoothstep) to exactly 0, so the
    mask has compact support and every pixel outside it keeps the photo's value bit for bit."""
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
    t = ((1.0 - radius) / max(feather, 1e-6)).clamp(0, 1)
    return (t * t * (3 - 2 * t)).unsqueeze(1)


def feather_mask(mask: Tensor, sigma: float) -> Tensor:
    """Soften a hard parsing mask with a Gaussian; values under 1/512 become exactly 0 (compact support)."""
    if sigma <= 0:
        return mask.clamp(0, 1)
    kernel = 2 * int(3 * sigma) + 1
    soft = kornia.filters.gaussian_blur2d(
        mask.float(), (kernel, kernel), (sigma, sigma), border_type="constant"
    )
    return torch.where(soft < 1 / 512, torch.zeros_like(soft), soft.clamp(0, 1))


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
    corners = torch.tensor(
        [[[0.0, 0.0], [size - 1, 0.0], [0.0, size - 1], [size - 1, size - 1]]], dtype=torch.float64
    )
    pts = apply_affine(inverse, corners)[0]
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
    to_region = (shift @ full)[:, :2].to(crops.dtype).expand(crops.shape[0], -1, -1)
    return kornia.geometry.transform.warp_affine(
        crops,
        to_region,
        (region.y1 - region.y0, region.x1 - region.x0),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )


def paste_faces(photo: Tensor, faces: Tensor, masks: Tensor, matrices: Tensor) -> tuple[Tensor, Tensor]:
    """Blend generated crops into a photo: ``photo`` (C, H, W), ``faces`` (B, C, S, S), ``masks``
    (B, 1, S, S), ``matrices`` (B, 2, 3) image -> crop. Faces are pasted in order, each over the result of
    the previous ones. Returns the new photo and the union paste mask (1, H, W) in photo pixels: where it is
    0 the photo is returned unchanged, bit for bit."""
    out = photo.clone()
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
    "MEAN_FACE_5",
    "MaskFn",
    "PasteRegion",
    "alignment_matrices",
    "apply_affine",
    "crop_faces",
    "ellipse_masks",
    "estimate_similarity",
    "feather_mask",
    "ffhq_template",
    "paste_faces",
    "paste_region",
    "template_pixels",
    "warp_back",
]
