"""Loss building blocks (the official code's identity losses) and every loss weight of every phase.

Margins and weights are config, never constants: the paper's values were not published. Only the paper's
terms and those a shipped recipe or ablation sets live here; what was tried and removed, with its
measurements, is in ``docs/research.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor


def identity_loss(a: Tensor, b: Tensor, margin: float = 0.1) -> Tensor:
    """Keep identities together: ``mean(1 - max(cos(a, b), m))`` (official ``IDLossExtractor``)."""
    return (1 - F.cosine_similarity(a, b, dim=1).clamp(min=margin)).mean()


def anonymity_loss(a: Tensor, b: Tensor, margin: float = 0.1) -> Tensor:
    """Push identities apart down to the margin: ``mean(max(cos(a, b), m))``; no reward below ``m``."""
    return F.cosine_similarity(a, b, dim=1).clamp(min=margin).mean()


def batch_diversity_loss(features: Tensor, threshold: float = 0.1) -> Tensor:
    """``sum_{i>j} cos_ij [cos_ij >= t]`` over a batch: different anonymized faces must not collapse."""
    unit = F.normalize(features, dim=1)
    cos = unit @ unit.T
    lower = torch.tril(torch.ones_like(cos, dtype=torch.bool), diagonal=-1)
    pairs = cos[lower]
    return (pairs * (pairs >= threshold)).sum()


class Encoded(NamedTuple):
    """One batch's encodings and their render, ``G(M(z, a))``."""

    identity: Tensor
    attributes: Tensor
    render: Tensor


def pixel_terms(weights: LossWeights, rendered: Tensor, target: Tensor) -> dict[str, Tensor]:
    """The weighted L1, squared-error and SSIM terms of a render against its target image."""
    w, terms = weights, {}
    if w.l1:
        terms["l1"] = w.l1 * F.l1_loss(rendered, target)
    if w.l2:
        terms["l2"] = w.l2 * F.mse_loss(rendered, target)
    if w.ssim:
        # kornia's SSIM loss is (1 - SSIM) / 2 on [0, 1] images
        terms["ssim"] = w.ssim * kornia.losses.ssim_loss((rendered + 1) / 2, (target + 1) / 2, window_size=7)
    return terms


@dataclass
class LossWeights:
    """Every loss weight of every phase; 0 switches a term off and skips its computation (the ablations).

    Args:
        l1: phase 1 and the render phase: L1 of the reconstruction ``G(M(E_id(x), E_attr(x)))`` (a render
            ``G(P(parameters))``) to ``x``.
        l2: phase 1 and the render phase: squared error of the reconstruction (the official code's pSp
            options weight it 1.0).
        ssim: phase 1 and the render phase: ``(1 - SSIM) / 2`` of the reconstruction (kornia, 7 px window).
        latent_target: phase 1 on SynthFaces: squared error of ``M(E_id(x), E_attr(x))`` to the W+ codes a
            pretrained renderer's parameter mapper gives ``x``'s parameters (``model.parameter_mapper``),
            and of a swap to the codes of the swapped parameters: a target for every style, no render.
        identity: phase 1: the reconstruction keeps the identity, ``1 - max(cos, margin)``.
        swap_identity: phase 1: a render of another face's identity carries that identity, so the generator
            must use the identity vector.
        swap_pixel: phase 1: that swap equals the rendered swap target (``batch["swap_image"]``, SynthFaces).
        adversarial: phase 1: non-saturating GAN loss on reconstructions and swaps (needs
            ``model.discriminator``).
        anonymized_adversarial: phase 2: the same on the anonymized render; its gradient reaches the flow
            (and in the joint phase the generator): anonymized identities must render as faces.
        r1: R1 gradient penalty on the discriminator's real inputs (StyleGAN2 uses 10).
        r1_interval: lazy R1: the penalty every N steps, weighted by N (StyleGAN2's choice).
        anonymity: phase 2, privacy: ``E_id(x_anon)`` far from ``z``, ``max(cos, margin)``.
        two_key_diversity: phase 2: two keys give two identities.
        batch_diversity: phase 2: the official ``L_inter`` over the batch's anonymized identities (a sum
            over pairs above ``diversity_threshold``).
        image: phase 2: the anonymized face keeps everything but the identity (L1 to the reconstruction).
        anonymized_identity: phase 2: ``E_id(x_anon)`` carries ``z_anon``, so the compensator's job is
            small.
        latent_norm: phase 2: ``z_anon`` stays on the unit sphere the generator was trained on.
        latent_recovery: phase 2 and the compensator phase: ``C(E_id(x_anon)) = z_anon``.
        recovery_identity: phase 2: the face recovered with the right key keeps the identity.
        recovery_image: phase 2: the face recovered with the right key equals ``x`` (L1).
        wrong_key: phase 2: a wrong key's recovery stays anonymous.
        latent_two_key: phase 2, identity space (no recognizer to fool): ``cos(F(z, c), F(z, c'))`` below
            the margin, two keys stay apart.
        latent_batch_diversity: phase 2, identity space: ``L_inter`` on ``F(z, c)`` with the whole batch
            under one key; without it the flow learns one target identity per key whatever the input.
        replay_size: compensator phase: (``E_id`` of the stored anonymized face, ``z_anon``) pairs rendered
            under fresh keys into a replay buffer before the steps only fit ``C``.
        replay_batch: compensator phase: pairs drawn from the buffer per step.
        margin: cosine margin of the identity and anonymity losses (the official default 0.1).
        diversity_threshold: cosine above which a pair counts in ``L_inter`` (official 0.1).
    """

    l1: float = 1.0
    l2: float = 0.0
    ssim: float = 0.5
    identity: float = 1.0
    swap_identity: float = 0.5
    swap_pixel: float = 0.0
    latent_target: float = 0.0
    adversarial: float = 0.0
    anonymized_adversarial: float = 0.0
    r1: float = 0.0
    r1_interval: int = 16
    anonymity: float = 1.0
    two_key_diversity: float = 1.0
    batch_diversity: float = 0.0
    image: float = 0.2
    anonymized_identity: float = 0.5
    latent_norm: float = 0.1
    latent_recovery: float = 1.0
    recovery_identity: float = 1.0
    recovery_image: float = 1.0
    wrong_key: float = 1.0
    latent_two_key: float = 0.0
    latent_batch_diversity: float = 0.0
    replay_size: int = 9600
    replay_batch: int = 256
    margin: float = 0.1
    diversity_threshold: float = 0.1

    def check(self) -> None:
        """One-line errors for settings no phase can use."""
        if self.replay_size < 1 or self.replay_batch < 1:
            raise ValueError(
                "losses.replay_size and replay_batch must be >= 1, "
                f"got {self.replay_size} and {self.replay_batch}"
            )
        if self.r1_interval < 1:
            raise ValueError(f"losses.r1_interval must be >= 1, got {self.r1_interval}")


@dataclass
class OptimizerConfig:
    """Adam for every phase; the generator and the discriminator may have rates of their own.

    Args:
        lr: learning rate of every trained part but the generator and the discriminator.
        generator_lr: the generator's rate (default: ``lr``).
        discriminator_lr: the discriminator's rate (default: ``generator_lr``).
        betas: Adam's betas.
        weight_decay: Adam's L2 weight decay.
        schedule: ``constant``, or ``cosine``: every rate falls along a half cosine to 0 at the fit's last
            step (per step; a resumed fit continues the curve). Short CPU budgets gain most
            (docs/research.md).
    """

    lr: float = 2e-3
    generator_lr: float | None = None
    discriminator_lr: float | None = None
    betas: tuple[float, float] = (0.5, 0.99)
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
