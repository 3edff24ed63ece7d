"""The one image resize every encoder does at its input edge."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_square(images: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize to ``size`` x ``size`` (a no-op at that size).

    torch's antialiased bilinear equals torchvision/PIL resizing, which the public checkpoints were trained
    with; kornia's ``resize(antialias=True)`` pre-blurs with a Gaussian instead, so it is not used here.
    """
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
