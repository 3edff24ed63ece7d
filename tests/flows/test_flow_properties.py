"""Contract tests every registered flow (built-in or plugin) must pass: exact inversion at init and after
training, a log-det equal to the autograd Jacobian's, key sensitivity, input validation, autocast safety
and checkpoint round trips."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from ifadit import registry
from ifadit.flows.base import KeyedFlow

FLOW_NAMES = sorted(registry.available("flows"))
DIM, COND_DIM, BLOCKS, BATCH = 512, 512, 4, 256
# 1e-3 is as high as Adam goes for glow's dense 512×512 LU mixing (3e-3 diverges within ~20 steps).
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR = 200, 64, 1e-3


def build(name: str, dim: int = DIM, cond_dim: int = COND_DIM, num_blocks: int = BLOCKS) -> KeyedFlow:
    return registry.create("flows", name, dim=dim, cond_dim=cond_dim, num_blocks=num_blocks)


def unit_vectors(batch: int, dim: int = DIM, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Identity vectors are L2-normalised ArcFace embeddings."""
    return F.normalize(torch.randn(batch, dim, dtype=dtype), dim=1)


def round_trip_error(flow: KeyedFlow, z: torch.Tensor, cond: torch.Tensor | None) -> float:
    z_anon, _ = flow(z, cond)
    return (flow.inverse(z_anon, cond) - z).abs().max().item()


def parameter_snapshot(flow: KeyedFlow) -> list[torch.Tensor]:
    return [p.detach().clone() for p in flow.parameters()]


def median_relative_change(before: list[torch.Tensor], flow: KeyedFlow) -> float:
    """Per-tensor ``|Δp| / |p|``, median over tensors: no single large tensor (e.g. a global scale stored
    as a pre-activation near 10) can hide that the rest did not move."""
    changes = [
        ((p.detach() - p0).norm() / p0.norm().clamp_min(1e-12)).item()
        for p0, p in zip(before, flow.parameters(), strict=True)
    ]
    return float(torch.tensor(changes).median())


_trained: dict[str, tuple[KeyedFlow, float]] = {}


def trained_flow(name: str) -> tuple[KeyedFlow, float]:
    """A flow after TRAIN_STEPS Adam steps on anonymity (push cos(F(z), z) down) + NLL, and the median
    relative change of its weights; trained once per name and shared by the tests that need it."""
    if name not in _trained:
        torch.manual_seed(1234)
        flow = build(name)
        before = parameter_snapshot(flow)
        optimizer = torch.optim.Adam(flow.parameters(), lr=TRAIN_LR)
        for _ in range(TRAIN_STEPS):
            z, cond = unit_vectors(TRAIN_BATCH), torch.randn(TRAIN_BATCH, COND_DIM)
            z_anon, logdet = flow(z, cond)
            nll = 0.5 * z_anon.pow(2).sum(dim=1) - logdet  # -log_prob up to a constant, from one pass
            loss = F.cosine_similarity(z_anon, z, dim=1).mean() + nll.mean() / DIM
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        moved = median_relative_change(before, flow)
        _trained[name] = (flow, moved)
    return _trained[name]


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("name", FLOW_NAMES)
def test_round_trip_float32_at_init(name: str, grad: bool) -> None:
    flow = build(name)
    z, cond = unit_vectors(BATCH), torch.randn(BATCH, COND_DIM)
    with torch.set_grad_enabled(grad):
        z_anon, logdet = flow(z, cond)
        z_back = flow.inverse(z_anon, cond)
    assert z_anon.shape == z.shape and z_anon.dtype == torch.float32
    assert logdet.shape == (BATCH,) and torch.isfinite(logdet).all()
    assert (z_back - z).abs().max().item() <= 1e-5
    assert (z_anon - z).abs().max().item() > 1e-3, "a fresh flow must not be the identity"


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_round_trip_float64_at_init(name: str) -> None:
    flow = build(name).double()
    z, cond = unit_vectors(BATCH, dtype=torch.float64), torch.randn(BATCH, COND_DIM, dtype=torch.float64)
    with torch.no_grad():
        z_anon, _ = flow(z, cond)
        assert z_anon.dtype == torch.float64
        assert (flow.inverse(z_anon, cond) - z).abs().max().item() <= 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("name", FLOW_NAMES)
def test_round_trip_after_training(name: str) -> None:
    flow, moved = trained_flow(name)
    assert moved > 0.1, f"training barely moved the weights (median relative change {moved:.4f})"
    z, cond = unit_vectors(BATCH), torch.randn(BATCH, COND_DIM)
    with torch.no_grad():
        assert round_trip_error(flow, z, cond) <= 1e-5
        flow64 = copy.deepcopy(flow).double()
        assert round_trip_error(flow64, z.double(), cond.double()) <= 1e-10


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_logdet_matches_autograd_jacobian(name: str) -> None:
    dim, cond_dim, batch = 6, 3, 5
    flow = build(name, dim=dim, cond_dim=cond_dim, num_blocks=3).double()
    z = torch.randn(batch, dim, dtype=torch.float64)
    cond = torch.randn(batch, cond_dim, dtype=torch.float64)
    flow(z, cond)  # lets data-dependent initialisations (ActNorm) happen before the Jacobian is taken
    # Move away from the near-identity init so every log-det term matters; much further and the composed
    # Jacobian gets so ill-conditioned (det ~ e^-75) that slogdet itself is off by ~1e-4.
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    _, logdet = flow(z, cond)
    jacobian = torch.autograd.functional.jacobian(lambda x: flow(x, cond)[0], z)  # (B, D, B, D)
    per_sample = jacobian[torch.arange(batch), :, torch.arange(batch), :]  # (B, D, D)
    expected = torch.linalg.slogdet(per_sample).logabsdet
    torch.testing.assert_close(logdet, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_wrong_condition_does_not_invert(name: str) -> None:
    flow = build(name)
    z = unit_vectors(BATCH)
    key, wrong_key = torch.randn(BATCH, COND_DIM), torch.randn(BATCH, COND_DIM)
    # 3e-3 is 300× the round-trip bound and ~20 % of a typical unit-vector coordinate; near-identity inits
    # (FrEIA's own, used by allinone, gives ~1e-2 here) are not expected to do more before training.
    with torch.no_grad():
        z_anon, _ = flow(z, key)
        assert (flow.inverse(z_anon, wrong_key) - z).abs().max().item() > 3e-3
        assert (flow(z, wrong_key)[0] - z_anon).abs().max().item() > 3e-3


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_unconditional_flow(name: str) -> None:
    flow = build(name, cond_dim=0)
    z = unit_vectors(BATCH)
    with torch.no_grad():
        z_anon, logdet = flow(z)
        assert logdet.shape == (BATCH,)
        assert (flow.inverse(z_anon) - z).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="unconditional"):
        flow(z, torch.randn(BATCH, 4))


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_bad_shapes_and_conditions_raise(name: str) -> None:
    flow = build(name, dim=8, cond_dim=4, num_blocks=2)
    z, cond = torch.randn(3, 8), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"expected z of shape \(batch, 8\)"):
        flow(torch.randn(3, 7), cond)
    with pytest.raises(ValueError, match=r"expected z of shape"):
        flow.inverse(torch.randn(8), cond)
    with pytest.raises(ValueError, match="needs a condition"):
        flow(z)
    with pytest.raises(ValueError, match=r"expected cond of shape \(batch, 4\)"):
        flow(z, torch.randn(3, 5))
    with pytest.raises(ValueError, match="cond has batch 2 but z has batch 3"):
        flow.inverse(z, torch.randn(2, 4))


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_runs_in_float32_under_bf16_autocast(name: str) -> None:
    flow = build(name)
    z, cond = unit_vectors(BATCH), torch.randn(BATCH, COND_DIM)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z_anon, logdet = flow(z, cond)
        z_back = flow.inverse(z_anon, cond)
    assert z_anon.dtype == torch.float32 and logdet.dtype == torch.float32 and z_back.dtype == torch.float32
    assert (z_back - z).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_state_dict_round_trip_reproduces_outputs(name: str) -> None:
    torch.manual_seed(0)
    original = build(name)
    z, cond = unit_vectors(BATCH), torch.randn(BATCH, COND_DIM)
    original(z, cond)  # data-dependent initialisations must travel in the state dict too
    torch.manual_seed(1)
    rebuilt = build(name)
    with torch.no_grad():
        expected, expected_logdet = original(z, cond)
        assert (rebuilt(z, cond)[0] - expected).abs().max().item() > 1e-4, "seeds should give different flows"
        rebuilt.load_state_dict(original.state_dict(), strict=True)
        actual, actual_logdet = rebuilt(z, cond)
        assert torch.equal(actual, expected) and torch.equal(actual_logdet, expected_logdet)
        assert torch.equal(rebuilt.inverse(expected, cond), original.inverse(expected, cond))
