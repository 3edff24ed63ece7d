"""The principal identity subspace and the flow that acts in it: fitted directions, exact inversion, the
part outside the subspace passed through untouched, the log-determinant, saving, and the errors."""

from __future__ import annotations

import pytest
import torch

from ifadit import registry
from ifadit.flows.subspace import PrincipalSubspace, SubspaceFlow

DIM, RANK, COND = 12, 4, 6


def embeddings(
    count: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points with standard deviations 5, 4, 3, 2 along four hidden orthonormal directions and 0.1 along
    the other eight, about a mean of 1; returns them and the hidden directions (DIM, RANK)."""
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=generator, dtype=dtype))
    stds = torch.tensor([5.0, 4.0, 3.0, 2.0] + [0.1] * (DIM - RANK), dtype=dtype)
    points = 1.0 + (torch.randn(count, DIM, generator=generator, dtype=dtype) * stds) @ rotation.T
    return points, rotation[:, :RANK]


def fitted_flow(dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[SubspaceFlow, torch.Tensor]:
    torch.manual_seed(seed)
    subspace = PrincipalSubspace(DIM, RANK).to(dtype)  # fitted in the dtype it runs in: an orthonormal basis
    data, _ = embeddings(4096, seed)
    subspace.fit(data)
    inner = registry.create("flows", "allinone", dim=RANK, cond_dim=COND, num_blocks=2)
    for param in inner.parameters():  # move away from the near-identity initialisation
        param.data.add_(0.05 * torch.randn_like(param))
    return SubspaceFlow(inner, subspace).to(dtype), data.to(dtype)


def test_fit_finds_the_directions_and_spreads_of_the_data() -> None:
    data, hidden = embeddings(20000)
    subspace = PrincipalSubspace(DIM, RANK).double()
    subspace.fit(data)
    # the same subspace: the projections onto it agree
    assert torch.allclose(subspace.basis @ subspace.basis.T, hidden @ hidden.T, atol=0.01)
    assert torch.allclose(subspace.scale, torch.tensor([5.0, 4.0, 3.0, 2.0], dtype=torch.float64), rtol=0.03)
    assert torch.allclose(subspace.mean, torch.ones(DIM, dtype=torch.float64), atol=0.1)
    expected = (25 + 16 + 9 + 4) / (25 + 16 + 9 + 4 + 8 * 0.01)
    assert subspace.explained_variance(data) == pytest.approx(expected, abs=1e-3)
    coords, _ = subspace.split(data)
    assert torch.allclose(coords.std(dim=0), torch.ones(RANK, dtype=torch.float64), atol=0.02)  # whitened
    common = PrincipalSubspace(DIM, RANK, whiten=False).double()
    common.fit(data)  # one deviation for all directions: their relative sizes stay
    assert torch.allclose(common.scale, torch.full((RANK,), (54 / 4) ** 0.5, dtype=torch.float64), rtol=0.03)
    assert torch.allclose(common.basis @ common.basis.T, subspace.basis @ subspace.basis.T, atol=1e-9)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_inverse_is_exact_and_the_rest_passes_through(dtype: torch.dtype, tolerance: float) -> None:
    flow, data = fitted_flow(dtype)
    z, cond = data[:256], torch.randn(256, COND, dtype=dtype)
    z_anon, _ = flow(z, cond)
    assert (flow.inverse(z_anon, cond) - z).abs().max() <= tolerance * z.abs().max()
    outside = torch.eye(DIM, dtype=dtype) - flow.subspace.basis @ flow.subspace.basis.T
    mean = flow.subspace.mean
    assert torch.allclose((z_anon - mean) @ outside, (z - mean) @ outside, atol=tolerance * 10)
    moved = ((z_anon - z) @ flow.subspace.basis).norm(dim=1)
    assert moved.min() > 0.1  # ... while the principal coordinates really change
    other = torch.randn(256, COND, dtype=dtype)
    assert (flow.inverse(z_anon, other) - z).abs().max() > 0.1  # another key does not invert it


def test_log_determinant_is_the_jacobians() -> None:
    flow, data = fitted_flow(torch.float64)
    cond = torch.randn(1, COND, dtype=torch.float64)
    for z in data[:3]:
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None], cond)[0][0], z)
        _, logdet = flow(z[None], cond)
        assert logdet.item() == pytest.approx(torch.linalg.slogdet(jacobian).logabsdet.item(), abs=1e-9)


def test_the_fitted_subspace_is_saved_with_the_flow() -> None:
    flow, data = fitted_flow(torch.float32)
    fresh = SubspaceFlow(registry.create("flows", "allinone", dim=RANK, cond_dim=COND, num_blocks=2),
                         PrincipalSubspace(DIM, RANK))
    fresh.load_state_dict(flow.state_dict())
    assert bool(fresh.subspace.fitted)
    cond = torch.randn(8, COND)
    assert torch.equal(fresh(data[:8], cond)[0], flow(data[:8], cond)[0])


def test_bad_settings_and_an_unfitted_subspace_fail_clearly() -> None:
    with pytest.raises(ValueError, match="rank must be between 1 and dim"):
        PrincipalSubspace(DIM, DIM + 1)
    with pytest.raises(ValueError, match="fit_images must exceed rank"):
        PrincipalSubspace(DIM, RANK, fit_images=RANK)
    with pytest.raises(ValueError, match="cannot span 4 directions"):
        PrincipalSubspace(DIM, RANK).fit(torch.randn(RANK, DIM))
    with pytest.raises(ValueError, match=r"expected embeddings of shape \(N, 12\)"):
        PrincipalSubspace(DIM, RANK).fit(torch.randn(100, DIM + 1))
    inner = registry.create("flows", "allinone", dim=RANK + 1, cond_dim=COND, num_blocks=2)
    with pytest.raises(ValueError, match="works on 5-d vectors but the identity subspace has rank 4"):
        SubspaceFlow(inner, PrincipalSubspace(DIM, RANK))
    unfitted = SubspaceFlow(registry.create("flows", "allinone", dim=RANK, cond_dim=COND, num_blocks=2),
                            PrincipalSubspace(DIM, RANK))
    with pytest.raises(RuntimeError, match="identity subspace is not fitted"):
        unfitted(torch.randn(2, DIM), torch.randn(2, COND))
