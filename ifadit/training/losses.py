"""Loss building blocks (the official code's identity losses) and every loss weight of every phase.

Margins and weights are config, never constants: the paper's values were not published. Only the paper's
terms and those a shipped recipe or ablation sets live here; what was tried and removed, with its
measurements, is in ``docs/research.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

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


@dataclass
class LossWeights:
    """Every loss weight of every phase; 0 switches a term off and skips its computation (the ablations)."""

    # phase 1: reconstruction and disentanglement
    l1: float = 1.0
    l2: float = 0.0  # the pSp options of the official code weight L2 at 1.0
    ssim: float = 0.5
    identity: float = 1.0  # E_id(G(M(z, a))) keeps z
    swap_identity: float = 0.5  # E_id(G(M(z_other, a))) carries z_other: the generator must use the identity
    swap_pixel: float = 0.0  # G(M(z_other, a)) equals the rendered swap (batch["swap_image"], SynthFaces)
    # Non-saturating GAN loss (needs ``model.discriminator``): ``adversarial`` judges phase 1's
    # reconstructions and swaps, ``anonymized_adversarial`` the anonymized render (its gradient reaches the
    # flow, and in the joint phase the generator): anonymized identities must render as faces.
    adversarial: float = 0.0
    anonymized_adversarial: float = 0.0
    r1: float = 0.0  # R1 gradient penalty on the discriminator's real inputs (StyleGAN2: 10)
    r1_interval: int = 16  # lazy R1: every N steps, weighted by N (StyleGAN2's choice)
    # phase 2: the keyed identity transform
    anonymity: float = 1.0  # privacy: E_id(x_anon) far from z
    two_key_diversity: float = 1.0  # two keys give two identities
    batch_diversity: float = 0.0  # the official L_inter over the batch (a sum over pairs)
    image: float = 0.2  # x_anon keeps the rest of the face (L1 to the reconstruction)
    anonymized_identity: float = 0.5  # E_id(x_anon) carries z_anon, so the compensator's job is small
    latent_norm: float = 0.1  # z_anon stays on the identity sphere the generator was trained on
    latent_recovery: float = 1.0  # compensator: C(E_id(x_anon)) = z_anon
    recovery_identity: float = 1.0  # E_id(x_rec) keeps z
    recovery_image: float = 1.0  # x_rec equals the reconstruction
    wrong_key: float = 1.0  # a wrong key's recovery stays anonymous
    # Identity-space terms on F(z, c), with no recognizer in the loop (nothing to win by fooling one):
    latent_two_key: float = 0.0  # cos(F(z, c), F(z, c')) below the margin: two keys stay apart
    # L_inter on F(z, c) over the batch, all faces under one key: without it the flow learns one target
    # identity per key whatever the input, so two keys collide and the inverse is ill-conditioned.
    latent_batch_diversity: float = 0.0
    # phase "compensator": steps render their faces under fresh keys into a replay buffer of
    # (E_id(stored x_anon), z_anon) pairs until it holds replay_size, and every step fits C on replay_batch
    # pairs drawn from it, so each costly render serves many cheap steps (weight: ``latent_recovery``).
    replay_size: int = 9600
    replay_batch: int = 256
    # shared
    margin: float = 0.1  # cosine margin of the identity/anonymity losses (official default)
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
    """Adam for every phase; the generator and the discriminator may have rates of their own."""

    lr: float = 2e-3
    generator_lr: float | None = None  # defaults to lr
    discriminator_lr: float | None = None  # defaults to generator_lr
    betas: tuple[float, float] = (0.5, 0.99)
    weight_decay: float = 0.0
    # "cosine": every group's rate falls along a half cosine to 0 at the fit's last step (per step; a
    # resumed fit continues the curve). Short CPU budgets gain most (docs/research.md).
    schedule: Literal["constant", "cosine"] = "constant"
