"""Loss building blocks of iFADIT (the official code's identity losses), as plain functions.

Margins and weights are arguments, never constants: the paper's values were not published.
"""

from __future__ import annotations

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
