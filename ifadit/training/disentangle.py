"""Phase 1: the attribute encoder and mapper (and a generator that is not pretrained) learn to reconstruct
``x`` from ``(E_id(x), E_attr(x))``, and a swapped identity must show up in the render."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ifadit.anonymizer import IFADIT
from ifadit.training.adversarial import Adversary
from ifadit.training.losses import Encoded, LossWeights, identity_loss, pixel_terms


def reconstruction_terms(
    model: IFADIT,
    weights: LossWeights,
    x: Tensor,
    swap_target: Tensor | None = None,
    adversary: Adversary | None = None,
    latent_targets: tuple[Tensor, Tensor] | None = None,
) -> tuple[dict[str, Tensor], Encoded]:
    """Phase-1 terms, and the encodings and render they computed (the joint phase's flow terms reuse
    them). ``swap_target``: the rendered swap SynthFaces provides for ``swap_pixel``.
    ``latent_targets``: the W+ codes of ``x`` and of its swap (image i-1's identity on image i's nuisance),
    for ``latent_target``."""
    m, w = model, weights
    with torch.no_grad():
        z = m.identity_encoder(x)
    a = m.attribute_encoder(x)
    w_plus = m.mapper(z, a)
    x_hat = m.generator(w_plus)
    terms = pixel_terms(w, x_hat, x)
    if w.identity:
        terms["identity"] = w.identity * identity_loss(m.identity_encoder(x_hat), z, w.margin)
    x_swap = None
    latent = bool(w.latent_target) and latent_targets is not None
    if (w.swap_identity or (w.swap_pixel and swap_target is not None) or latent) and x.shape[0] > 1:
        z_other = z.roll(1, dims=0)  # image i-1's identity on image i's attributes
        w_swap = m.mapper(z_other, a)
        if latent:
            terms["swap_latent_target"] = w.latent_target * F.mse_loss(w_swap, latent_targets[1])
        if w.swap_identity or (w.swap_pixel and swap_target is not None):
            x_swap = m.generator(w_swap)
        if w.swap_identity:
            terms["swap_identity"] = w.swap_identity * identity_loss(
                m.identity_encoder(x_swap), z_other, w.margin
            )
        if w.swap_pixel and swap_target is not None:
            terms["swap_pixel"] = w.swap_pixel * F.l1_loss(x_swap, swap_target)
    if latent:
        terms["latent_target"] = w.latent_target * F.mse_loss(w_plus, latent_targets[0])
    if w.adversarial and adversary is not None:
        renders = x_hat if x_swap is None else torch.cat((x_hat, x_swap))
        terms["adversarial"] = w.adversarial * adversary.fool(renders)
    return terms, Encoded(z, a, x_hat)
