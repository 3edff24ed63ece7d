"""The keyed-flow contract as plain checks, so a plugin's tests hold its flow to what ifadit's task assumes.

Every check takes the flow as a registered name (``"glow"``), a class or any callable accepting
``dim=, cond_dim=, num_blocks=`` (use ``functools.partial`` for options of your own), or an already built
:class:`~ifadit.flows.base.KeyedFlow`. From a name or factory a check builds what it needs (other sizes, a
second seed); an instance is deep-copied and the checks that would need another build are skipped.
A violated property raises ``AssertionError`` naming the flow, the property and the measured value.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ifadit import registry
from ifadit.flows.base import KeyedFlow
from ifadit.testing._common import CannotBuild, ContractReport, run_checks, seeded

FlowLike = str | Callable[..., KeyedFlow] | KeyedFlow


@dataclass(frozen=True)
class FlowContract:
    """Sizes and tolerances of the flow checks; the defaults are ifadit's (512-d identities, 4 blocks)."""

    dim: int = 512
    cond_dim: int = 512
    num_blocks: int = 4
    batch: int = 256
    atol_float32: float = 1e-5  # max-abs round-trip error on unit 512-d vectors
    atol_float64: float = 1e-10
    min_change: float = 1e-3  # a fresh flow is not the identity map
    # A wrong key must miss by this much (300x the float32 bound); near-identity inits reach ~1e-2.
    key_gap: float = 3e-3
    perturb: float = 0.0  # noise std added to every parameter before the round-trip and key checks
    jacobian_sizes: tuple[int, int, int, int] = (6, 3, 3, 5)  # dim, cond_dim, num_blocks, batch
    # Away from a near-identity init every log-det term matters; much further and slogdet itself drifts.
    jacobian_perturb: float = 0.1
    logdet_atol: float = 1e-4
    train_steps: int = 200
    train_batch: int = 64
    train_lr: float = 1e-3  # as high as Adam goes for glow's dense 512x512 LU mixing
    min_weight_change: float = 0.1  # median relative change training must reach to prove anything
    seed: int = 0
    device: str = "cpu"


class _Source:
    """Builds flows for the checks from a name, a factory or a fixed instance."""

    def __init__(self, flow: FlowLike, contract: FlowContract) -> None:
        self.contract = contract
        self.instance = flow if isinstance(flow, KeyedFlow) else None
        if isinstance(flow, str):
            self.label = flow
            self.factory: Callable[..., KeyedFlow] | None = lambda **kw: registry.create("flows", flow, **kw)
        elif self.instance is not None:
            self.label, self.factory = type(flow).__name__, None
        else:
            self.label = getattr(flow, "__qualname__", None) or getattr(
                getattr(flow, "func", flow), "__qualname__", repr(flow)
            )
            self.factory = flow

    def sizes(self) -> tuple[int, int, int]:
        if self.instance is not None:
            return self.instance.dim, self.instance.cond_dim, self.instance.num_blocks
        return self.contract.dim, self.contract.cond_dim, self.contract.num_blocks

    def build(
        self, dim: int | None = None, cond_dim: int | None = None, num_blocks: int | None = None
    ) -> KeyedFlow:
        default = self.sizes()
        wanted = (dim or default[0], default[1] if cond_dim is None else cond_dim, num_blocks or default[2])
        if self.instance is not None:
            if wanted != default:
                raise CannotBuild(f"needs a flow of (dim, cond_dim, num_blocks) = {wanted}; give a factory")
            flow = copy.deepcopy(self.instance)
        else:
            assert self.factory is not None
            flow = self.factory(dim=wanted[0], cond_dim=wanted[1], num_blocks=wanted[2])
        assert isinstance(flow, KeyedFlow), (
            f"{self.label}: built a {type(flow).__name__}, not an ifadit.flows.base.KeyedFlow subclass"
        )
        assert (flow.dim, flow.cond_dim, flow.num_blocks) == wanted, (
            f"{self.label}: asked for (dim, cond_dim, num_blocks) = {wanted}, "
            f"got {(flow.dim, flow.cond_dim, flow.num_blocks)}"
        )
        return flow.to(self.contract.device)

    def fail(self, message: str) -> str:
        return f"{self.label}: {message}"


def _perturb(flow: KeyedFlow, scale: float) -> None:
    if scale:
        with torch.no_grad():
            for p in flow.parameters():
                if p.is_floating_point():
                    p.add_(scale * torch.randn_like(p))


def _unit_vectors(batch: int, dim: int, dtype: torch.dtype, device: str) -> Tensor:
    """Identity vectors are L2-normalised embeddings."""
    return F.normalize(torch.randn(batch, dim, dtype=dtype, device=device), dim=1)


def _inputs(src: _Source, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor | None]:
    dim, cond_dim, _ = src.sizes()
    c = src.contract
    z = _unit_vectors(c.batch, dim, dtype, c.device)
    cond = torch.randn(c.batch, cond_dim, dtype=dtype, device=c.device) if cond_dim else None
    return z, cond


def _max_abs(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


def _round_trip(src: _Source, flow: KeyedFlow, dtype: torch.dtype, atol: float, what: str) -> None:
    z, cond = _inputs(src, dtype)
    c = src.contract
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            z_anon, logdet = flow(z, cond)
            z_back = flow.inverse(z_anon, cond)
        assert z_anon.shape == z.shape, src.fail(
            f"forward gave shape {tuple(z_anon.shape)} for {tuple(z.shape)}"
        )
        assert z_anon.dtype == dtype and z_back.dtype == dtype, src.fail(
            f"{what}: forward/inverse gave {z_anon.dtype}/{z_back.dtype}, expected {dtype}"
        )
        assert logdet.shape == (c.batch,), src.fail(
            f"logdet has shape {tuple(logdet.shape)}, expected ({c.batch},)"
        )
        assert torch.isfinite(logdet).all(), src.fail("logdet is not finite")
        error = _max_abs(z_back, z)
        assert error <= atol, src.fail(
            f"{what} round trip (grad={'on' if grad else 'off'}) max-abs error {error:.3g} > {atol:g}"
        )
        moved = _max_abs(z_anon, z)
        assert moved > c.min_change, src.fail(
            f"forward moved z by at most {moved:.3g}: the flow is the identity"
        )


def check_round_trip_float32(flow: FlowLike, contract: FlowContract | None = None) -> None:
    """inverse(forward(z, c), c) == z within ``atol_float32``, with and without autograd; shapes, dtypes."""
    src = _Source(flow, contract or FlowContract())
    with seeded(src.contract.seed):
        built = src.build()
        _perturb(built, src.contract.perturb)
        _round_trip(src, built, torch.float32, src.contract.atol_float32, "float32")


def check_round_trip_float64(flow: FlowLike, contract: FlowContract | None = None) -> None:
    """The same round trip in float64 within ``atol_float64``: the inverse is exact, not approximate."""
    src = _Source(flow, contract or FlowContract())
    with seeded(src.contract.seed):
        built = src.build().double()
        _perturb(built, src.contract.perturb)
        _round_trip(src, built, torch.float64, src.contract.atol_float64, "float64")


def check_logdet_matches_jacobian(flow: FlowLike, contract: FlowContract | None = None) -> None:
    """The returned log-det equals log|det| of the autograd Jacobian of forward, per sample (float64)."""
    src = _Source(flow, contract or FlowContract())
    c = src.contract
    dim, cond_dim, blocks, batch = c.jacobian_sizes
    if src.instance is not None:  # a fixed instance is checked at its own size, on two samples
        (dim, cond_dim, blocks), batch = src.sizes(), 2
    with seeded(c.seed):
        built = src.build(dim, cond_dim, blocks).double()
        z = torch.randn(batch, dim, dtype=torch.float64, device=c.device)
        cond = torch.randn(batch, cond_dim, dtype=torch.float64, device=c.device) if cond_dim else None
        built(z, cond)  # lets data-dependent initialisations (ActNorm) happen before the Jacobian is taken
        _perturb(built, c.jacobian_perturb)
        _, logdet = built(z, cond)
        assert logdet.shape == (batch,), src.fail(
            f"logdet has shape {tuple(logdet.shape)}, expected ({batch},)"
        )
        expected = torch.empty(batch, dtype=torch.float64)
        for i in range(batch):
            ci = None if cond is None else cond[i : i + 1]
            jac = torch.autograd.functional.jacobian(lambda x, ci=ci: built(x[None], ci)[0][0], z[i])
            expected[i] = torch.linalg.slogdet(jac).logabsdet
    gap = (logdet.detach().cpu() - expected).abs().max().item()
    assert gap <= c.logdet_atol, src.fail(
        f"logdet differs from the autograd Jacobian's log|det| by {gap:.3g} (> {c.logdet_atol:g}): "
        f"returned {logdet.detach().cpu().tolist()}, Jacobian {expected.tolist()}"
    )


def check_key_sensitivity(flow: FlowLike, contract: FlowContract | None = None) -> None:
    """Another condition gives another output, and inverting under it misses the original by ``key_gap``."""
    src = _Source(flow, contract or FlowContract())
    c = src.contract
    if src.sizes()[1] == 0:
        raise CannotBuild("an unconditional flow has no key")
    with seeded(c.seed):
        built = src.build()
        _perturb(built, c.perturb)
        z, key = _inputs(src)
        _, wrong_key = _inputs(src)
        with torch.no_grad():
            z_anon, _ = built(z, key)
            missed = _max_abs(built.inverse(z_anon, wrong_key), z)
            apart = _max_abs(built(z, wrong_key)[0], z_anon)
    assert missed > c.key_gap, src.fail(f"a wrong key recovers z to within {missed:.3g} (<= {c.key_gap:g})")
    assert apart > c.key_gap, src.fail(f"two keys give outputs only {apart:.3g} apart (<= {c.key_gap:g})")


def check_unconditional(flow: FlowLike, contract: FlowContract | None = None) -> None:
    """``cond_dim=0`` builds an unconditional flow that inverts without a condition and refuses one."""
    src = _Source(flow, contract or FlowContract())
    c = src.contract
    with seeded(c.seed):
        built = src.build(cond_dim=0)
        z = _unit_vectors(c.batch, built.dim, torch.float32, c.device)
        with torch.no_grad():
            z_anon, logdet = built(z)
            error = _max_abs(built.inverse(z_anon), z)
    assert logdet.shape == (c.batch,), src.fail(f"unconditional logdet has shape {tuple(logdet.shape)}")
    assert error <= c.atol_float32, src.fail(
        f"unconditional round trip error {error:.3g} > {c.atol_float32:g}"
    )
    _expect_value_error(src, "unconditional", lambda: built(z, torch.randn(c.batch, 4, device=c.device)))


def _expect_value_error(src: _Source, fragment: str, call: Callable[[], object]) -> None:
    try:
        call()
    except ValueError as exc:
        assert fragment in str(exc), src.fail(f"ValueError {str(exc)!r} does not say {fragment!r}")
        return
    raise AssertionError(src.fail(f"expected a ValueError saying {fragment!r}, nothing was raised"))


def check_input_validation(flow: FlowLike, contract: FlowContract | None = None) -> None:
    """Wrong shapes, a missing condition and mismatched batches raise ValueError with a clear message."""
    src = _Source(flow, contract or FlowContract())
    c = src.contract
    dim, cond_dim, blocks = (8, 4, 2) if src.instance is None else src.sizes()
    if cond_dim == 0:
        raise CannotBuild("the condition checks need a conditional flow")
    with seeded(c.seed):
        built = src.build(dim, cond_dim, blocks)
        dev = c.device
        z, cond = torch.randn(3, dim, device=dev), torch.randn(3, cond_dim, device=dev)
        _expect_value_error(
            src,
            f"expected z of shape (batch, {dim})",
            lambda: built(torch.randn(3, dim - 1, device=dev), cond),
        )
        _expect_value_error(
            src, "expected z of shape", lambda: built.inverse(torch.randn(dim, device=dev), cond)
        )
        _expect_value_error(src, "needs a condition", lambda: built(z))
        _expect_value_error(
            src,
            f"expected cond of shape (batch, {cond_dim})",
            lambda: built(z, torch.randn(3, cond_dim + 1, device=dev)),
        )
        _expect_value_error(
            src,
            "cond has batch 2 but z has batch 3",
            lambda: built.inverse(z, torch.randn(2, cond_dim, device=dev)),
        )


def check_float32_under_autocast(flow: FlowLike, contract: FlowContract | None = None) -> None:
    """Under bf16 autocast the flow still computes, returns and inverts in float32."""
    src = _Source(flow, contract or FlowContract())
    c = src.contract
    with seeded(c.seed):
        built = src.build()
        _perturb(built, c.perturb)
        z, cond = _inputs(src)
        with torch.no_grad(), torch.autocast(torch.device(c.device).type, dtype=torch.bfloat16):
            z_anon, logdet = built(z, cond)
            z_back = built.inverse(z_anon, cond)
    dtypes = (z_anon.dtype, logdet.dtype, z_back.dtype)
    assert dtypes == (torch.float32,) * 3, src.fail(f"under bf16 autocast got dtypes {dtypes}, not float32")
    error = _max_abs(z_back, z)
    assert error <= c.atol_float32, src.fail(
        f"round trip under autocast error {error:.3g} > {c.atol_float32:g}"
    )


def check_state_dict_round_trip(flow: FlowLike, contract: FlowContract | None = None) -> None:
    """A flow built with another seed and given the first one's state dict reproduces it bit for bit,
    data-dependent initialisations (ActNorm) included."""
    src = _Source(flow, contract or FlowContract())
    if src.instance is not None:
        raise CannotBuild("needs two flows built with different seeds; give a factory")
    c = src.contract
    with seeded(c.seed):
        original = src.build()
        z, cond = _inputs(src)
        original(z, cond)  # data-dependent initialisations must travel in the state dict too
    with seeded(c.seed + 1):
        rebuilt = src.build()
    with torch.no_grad():
        expected, expected_logdet = original(z, cond)
        differ = _max_abs(rebuilt(z, cond)[0], expected)
        assert differ > 1e-4, src.fail(
            "two seeds built the same flow, so the state-dict check would be vacuous"
        )
        rebuilt.load_state_dict(original.state_dict(), strict=True)
        actual, actual_logdet = rebuilt(z, cond)
        same = torch.equal(actual, expected) and torch.equal(actual_logdet, expected_logdet)
        assert same, src.fail("a flow loaded from another's state dict gives different outputs")
        inverse_same = torch.equal(rebuilt.inverse(expected, cond), original.inverse(expected, cond))
        assert inverse_same, src.fail("a flow loaded from another's state dict inverts differently")


def train_briefly(flow: KeyedFlow, contract: FlowContract | None = None) -> float:
    """Adam on anonymity (push cos(F(z), z) down) plus NLL for ``train_steps``; returns the median over
    parameter tensors of ``|dp| / |p|``, so no single large tensor can hide that the rest did not move."""
    c = contract or FlowContract()
    before = [p.detach().clone() for p in flow.parameters()]
    optimizer = torch.optim.Adam(flow.parameters(), lr=c.train_lr)
    for _ in range(c.train_steps):
        z = _unit_vectors(c.train_batch, flow.dim, torch.float32, c.device)
        cond = torch.randn(c.train_batch, flow.cond_dim, device=c.device) if flow.cond_dim else None
        z_anon, logdet = flow(z, cond)
        nll = 0.5 * z_anon.pow(2).sum(dim=1) - logdet  # -log_prob up to a constant, from one pass
        loss = F.cosine_similarity(z_anon, z, dim=1).mean() + nll.mean() / flow.dim
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changes = [
        ((p.detach() - p0).norm() / p0.norm().clamp_min(1e-12)).item()
        for p0, p in zip(before, flow.parameters(), strict=True)
    ]
    return float(torch.tensor(changes).median()) if changes else 0.0


def fit_briefly(flow: KeyedFlow, contract: FlowContract | None = None) -> None:
    """Fit a flow that is fitted to identities (``identities_to_fit``) on unit vectors whose variance falls
    off over the coordinates, as real identity embeddings do (the whitening then has work to do)."""
    c = contract or FlowContract()
    falloff = torch.logspace(0, -2, flow.dim, device=c.device)
    flow.fit_identities(F.normalize(torch.randn(flow.identities_to_fit, flow.dim, device=c.device) * falloff))
    assert not flow.identities_to_fit, f"{type(flow).__name__}: still asks for identities after a fit"


def check_round_trip_after_training(flow: FlowLike, contract: FlowContract | None = None) -> None:
    """After real training steps (or, for a flow fitted to identities, after its fit) the flow still
    inverts within the float32 and float64 bounds (slow)."""
    src = _Source(flow, contract or FlowContract())
    c = src.contract
    with seeded(c.seed):
        built = src.build()
        if built.identities_to_fit:
            fit_briefly(built, c)
        else:
            moved = train_briefly(built, c)
            assert moved > c.min_weight_change, src.fail(
                f"training barely moved the weights (median relative change {moved:.4f})"
            )
        z, cond = _inputs(src)
        with torch.no_grad():
            z_anon, _ = built(z, cond)
            error = _max_abs(built.inverse(z_anon, cond), z)
            assert error <= c.atol_float32, src.fail(f"after training float32 round trip error {error:.3g}")
            flow64 = copy.deepcopy(built).double()
            z64, cond64 = z.double(), None if cond is None else cond.double()
            error64 = _max_abs(flow64.inverse(flow64(z64, cond64)[0], cond64), z64)
            assert error64 <= c.atol_float64, src.fail(
                f"after training float64 round trip error {error64:.3g}"
            )


FlowCheck = Callable[[FlowLike, FlowContract | None], None]

#: Every flow check by name, in the order :func:`check_flow` runs them.
FLOW_CHECKS: dict[str, FlowCheck] = {
    "round_trip_float32": check_round_trip_float32,
    "round_trip_float64": check_round_trip_float64,
    "logdet_matches_jacobian": check_logdet_matches_jacobian,
    "key_sensitivity": check_key_sensitivity,
    "unconditional": check_unconditional,
    "input_validation": check_input_validation,
    "float32_under_autocast": check_float32_under_autocast,
    "state_dict_round_trip": check_state_dict_round_trip,
    "round_trip_after_training": check_round_trip_after_training,
}
#: Checks that take more than a second or two per flow; :func:`check_flow` runs them with ``slow=True``.
SLOW_FLOW_CHECKS: frozenset[str] = frozenset({"round_trip_after_training"})


def check_flow(
    flow: FlowLike,
    contract: FlowContract | None = None,
    *,
    slow: bool = False,
    include: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> ContractReport:
    """Run the flow contract (all of :data:`FLOW_CHECKS`, the slow ones only with ``slow``).

    Raises AssertionError at the first violated property; returns which checks passed and which were
    skipped (an instance cannot be rebuilt at other sizes or seeds: pass a factory to run them all)."""
    contract = contract or FlowContract()
    if not slow:
        exclude = (*exclude, *(n for n in SLOW_FLOW_CHECKS if include is None or n not in include))
    checks = {name: (lambda check=check: check(flow, contract)) for name, check in FLOW_CHECKS.items()}
    return run_checks(checks, include, exclude)
