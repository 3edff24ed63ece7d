"""The identity losses against hand-computed values."""

import math

import torch

from ifadit.training.losses import anonymity_loss, batch_diversity_loss, identity_loss


def test_identity_and_anonymity_losses_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cos = 1, 0, -1 -> clamped 1, 0.1, 0.1
    assert math.isclose(identity_loss(a, b, margin=0.1).item(), (0 + 0.9 + 0.9) / 3, rel_tol=1e-6)
    assert math.isclose(anonymity_loss(a, b, margin=0.1).item(), (1 + 0.1 + 0.1) / 3, rel_tol=1e-6)
    assert math.isclose(anonymity_loss(a, 3 * b, margin=0.0).item(), 1 / 3, rel_tol=1e-6)  # scale-free


def test_batch_diversity_counts_pairs_above_threshold_once():
    s = math.sqrt(0.5)
    f = torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0], [-1.0, 0.0]])
    # pairs: (1,0) s, (2,0) 0, (2,1) s, (3,0) -1, (3,1) -s, (3,2) 0 -> only the two cos = s count
    assert math.isclose(batch_diversity_loss(f, threshold=0.1).item(), 2 * s, rel_tol=1e-6)
    assert batch_diversity_loss(f, threshold=0.8).item() == 0.0


def test_losses_have_gradients():
    a = torch.randn(4, 8, requires_grad=True)
    (identity_loss(a, torch.randn(4, 8)) + batch_diversity_loss(a, threshold=-1.0)).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
