"""The keyed-rotation flow: exact inverse, log-det, orthogonality, key dependence, in-distribution outputs."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from ifadit_keyed_rotation import KeyedRotationFlow
from torch import Tensor

from ifadit.testing import (
    FLOW_CHECKS,
    SLOW_FLOW_CHECKS,
    FlowContract,
    check_flow,
    check_logdet_matches_jacobian,
)


def _perturbed(flow: KeyedRotationFlow, scale: float) -> KeyedRotationFlow:
    """Move the freshly built base away from its near-identity start, so the tests exercise a real map."""
    with torch.no_grad():
        for param in flow.parameters():
            param.add_(scale * torch.randn_like(param))
    return flow.eval()


def _unit_rows(n: int, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, dtype=dtype), dim=1)


def test_keeps_the_flow_contract_away_from_its_start() -> None:
    """ifadit's whole flow contract at 512-d (round trips in float32/float64, log-det, keys, validation,
    autocast, state dict) with the base moved off its near-identity start."""
    report = check_flow(KeyedRotationFlow, FlowContract(perturb=0.02))
    assert report.passed == tuple(n for n in FLOW_CHECKS if n not in SLOW_FLOW_CHECKS) and not report.skipped


def test_logdet_matches_autograd_jacobian() -> None:
    factory = functools.partial(KeyedRotationFlow, reflections=4, base_kwargs={"hidden": (16,)})
    check_logdet_matches_jacobian(factory, FlowContract(jacobian_sizes=(6, 3, 2, 4), jacobian_perturb=0.3))
    flow = _perturbed(factory(dim=6, cond_dim=3, num_blocks=2).double(), 0.3)
    _, logdet = flow(torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))
    assert logdet.abs().max() > 1e-2  # a volume-preserving map would make the Jacobian check vacuous


@pytest.mark.parametrize(
    ("dim", "reflections", "block_size", "determinant"),
    [(32, 8, 8, 1.0), (30, 8, 8, 1.0), (32, 3, None, -1.0), (30, 3, 10, -1.0), (32, 3, 8, 1.0)],
    ids=["blocks", "ragged-blocks", "one-block-odd", "odd-blocks-odd", "even-blocks-odd"],
)
def test_rotation_is_orthogonal_and_matches_batched_reflections(
    dim: int, reflections: int, block_size: int | None, determinant: float
) -> None:
    flow = KeyedRotationFlow(dim, 16, 1, reflections=reflections, block_size=block_size).double()
    key, u = torch.randn(5, 16, dtype=torch.float64), torch.randn(5, dim, dtype=torch.float64)
    rotation = flow.rotation_matrix(key)
    eye = torch.eye(dim, dtype=torch.float64).expand(5, -1, -1)
    assert torch.allclose(rotation.transpose(1, 2) @ rotation, eye, atol=1e-12)
    # det = (−1)^(reflections · number of blocks): every block is a product of `reflections` reflections.
    assert torch.allclose(torch.linalg.det(rotation), torch.full((5,), determinant, dtype=torch.float64))
    assert (rotation - eye).abs().amax(dim=(1, 2)).min() > 0.1  # not the identity
    assert (rotation[0] - rotation[1]).abs().max() > 0.1  # and key-dependent

    rotated = flow.rotate(u, key)
    assert torch.allclose(rotated, (rotation @ u[:, :, None])[:, :, 0], atol=1e-12)
    assert torch.allclose(rotated.norm(dim=1), u.norm(dim=1), atol=1e-12)
    assert torch.allclose(flow.unrotate(rotated, key), u, atol=1e-12)


def test_blocks_make_the_rotation_move_every_direction() -> None:
    u, key = torch.randn(512, 512), torch.randn(512, 64)
    with torch.no_grad():
        cosine = {
            block_size: torch.cosine_similarity(u, flow.rotate(u, key), dim=1).mean().item()
            for block_size in (None, 8)
            for flow in [KeyedRotationFlow(512, 64, 1, reflections=8, block_size=block_size)]
        }
    assert cosine[None] > 0.9  # 8 reflections over 512 coordinates: R − I has rank 8, base points barely move
    assert abs(cosine[8]) < 0.3  # per-block reflections: R − I has full rank, base points move far


def test_wrong_key_does_not_invert() -> None:
    flow = _perturbed(KeyedRotationFlow(512, 512, 4), scale=0.02)
    z, key = _unit_rows(64, 512), torch.randn(64, 512)
    with torch.no_grad():
        z_anon, _ = flow(z, key)
        right = (flow.inverse(z_anon, key) - z).norm(dim=1)
        wrong = (flow.inverse(z_anon, torch.randn(64, 512)) - z).norm(dim=1)
    assert (z_anon - z).norm(dim=1).mean() > 0.05  # the key really moved the identities
    assert right.max() < 1e-5
    assert wrong.min() > 0.05  # every sample misses (the unit identity vectors have norm 1)


def _toy_identities(n: int) -> Tensor:
    """A non-Gaussian 4-d cloud off the origin: a noisy ring, a parabola over it, a shifted coordinate."""
    angle = 2 * math.pi * torch.rand(n)
    radius = 2.0 + 0.1 * torch.randn(n)
    x0, x1 = radius * angle.cos(), radius * angle.sin()
    x2 = 0.5 * x0.pow(2) - 1.0 + 0.1 * torch.randn(n)
    x3 = 1.5 + 0.3 * torch.randn(n)
    return torch.stack((x0, x1, x2, x3), dim=1)


def test_anonymized_identities_stay_in_distribution_after_base_training() -> None:
    flow = KeyedRotationFlow(4, 8, 6, base_kwargs={"hidden": (64, 64)})
    optimizer = torch.optim.Adam(flow.base.parameters(), lr=3e-3)
    for _ in range(500):
        loss = flow.base_nll(_toy_identities(256))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.eval()
    with torch.no_grad():
        z, key = _toy_identities(2000), torch.randn(2000, 8)
        z_anon, _ = flow(z, key)
        # The same rotation applied in data space instead of base space: the naive alternative.
        naive = (flow.rotation_matrix(key) @ z[:, :, None])[:, :, 0]
        real_lp, anon_lp, naive_lp = (flow.base.log_prob(x) for x in (z, z_anon, naive))
    assert (z_anon - z).norm(dim=1).mean() > 1.0  # the key moves identities a lot (ring radius is 2)
    assert anon_lp.mean() > real_lp.mean() - 1.0  # ... and they stay as likely as real ones
    assert (anon_lp > real_lp.quantile(0.01)).float().mean() > 0.9
    assert naive_lp.mean() < real_lp.mean() - 10.0  # whereas a data-space rotation leaves the distribution


def test_without_a_key_the_rotation_is_learned_and_fixed() -> None:
    flow = _perturbed(KeyedRotationFlow(16, 0, 2), scale=0.02)
    z = _unit_rows(32, 16)
    with torch.no_grad():
        z_anon, _ = flow(z)
        assert (flow.inverse(z_anon) - z).abs().max() < 1e-5
    assert (z_anon - z).norm(dim=1).mean() > 0.1
    assert flow.rotation_matrix(None).shape == (1, 16, 16)
    flow.rotate(z, None).sum().backward()
    assert flow.unkeyed_vectors.grad is not None and flow.unkeyed_vectors.grad.abs().sum() > 0
