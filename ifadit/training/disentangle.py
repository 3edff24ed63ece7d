"""Phase 1: the attribute encoder and mapper (and a generator that is not pretrained) learn to reconstruct
``x`` from ``(E_id(x), E_attr(x))``, and a swapped identity must show up in the render."""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from ifadit.anonymizer import IFADIT
from ifadit.training.adversarial import Adversary
from ifadit.training.losses import Encoded, LossWeights, identity_loss


def reconstruction_terms(
    model: IFADIT,
    weights: LossWeights,
    x: Tensor,
    swap_target: Tensor | None = None,
    adversary: Adversary | None = None,
) -> tuple[dict[str, Tensor], Encoded]:
    """Phase-1 terms, and the encodings and render they computed (the joint phase's flow terms reuse
    them). ``swap_target``: the rendered swap SynthFaces provides for ``swap_pixel``."""
    m, w = model, weights
    with torch.no_grad():
        z = m.identity_encoder(x)
    a = m.attribute_encoder(x)
    x_hat = m.render(z, a)
    terms: dict[str, Tensor] = {}
    if w.l1:
        terms["l1"] = w.l1 * F.l1_loss(x_hat, x)
    if w.l2:
        terms["l2"] = w.l2 * F.mse_loss(x_hat, x)
    if w.ssim:
        # kornia's SSIM loss is (1 - SSIM) / 2 on [0, 1] images
        terms["ssim"] = w.ssim * kornia.losses.ssim_loss((x_hat + 1) / 2, (x + 1) / 2, window_size=7)
    if w.identity:
        terms["identity"] = w.identity * identity_loss(m.identity_encoder(x_hat), z, w.margin)
    x_swap = None
    if (w.swap_identity or (w.swap_pixel and swap_target is not None)) and x.shape[0] > 1:
        z_other = z.roll(1, dims=0)  # image i-1's identity on image i's attributes
        x_swap = m.render(z_other, a)
        if w.swap_identity:
            terms["swap_identity"] = w.swap_identity * identity_loss(
                m.identity_encoder(x_swap), z_other, w.margin
            )
        if w.swap_pixel and swap_target is not None:
            terms["swap_pixel"] = w.swap_pixel * F.l1_loss(x_swap, swap_target)
    if w.adversarial and adversary is not None:
        renders = x_hat if x_swap is None else torch.cat((x_hat, x_swap))
        terms["adversarial"] = w.adversarial * adversary.fool(renders)
    return terms, Encoded(z, a, x_hat)
