"""The rational-quadratic spline flow: the elementwise transform itself (monotone, [-B, B] onto [-B, B],
identity tails, exact on knots) and the flow's round trips with inputs in the tails and on the boundaries.
The contract shared by all flows is tested in test_flow_properties.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from ifadit import registry
from ifadit.flows.layers import FixedPermutation
from ifadit.flows.spline import (
    FeatureScale,
    RQSplineCoupling,
    SplineFlow,
    rational_quadratic_spline,
    spline_knots,
)

BOUND = 3.0
DIM, COND_DIM, BLOCKS, BATCH = 512, 512, 4, 256


def all_knots(sizes: torch.Tensor, min_size: float = 1e-3) -> torch.Tensor:
    """The (2, K+1, D) x- and y-knots of one parameter set, the boundaries ±B included."""
    interior = spline_knots(sizes, tail_bound=BOUND, min_bin_width=min_size, min_bin_height=min_size)[0]
    return F.pad(F.pad(interior, (0, 0, 1, 0), value=-BOUND), (0, 0, 0, 1), value=BOUND)


def spline_parameters(
    features: int, bins: int, scale: float, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """One set of unnormalised parameters per feature, shaped (1, 2, K, D) and (1, K−1, D)."""
    sizes = scale * torch.randn(1, 2, bins, features, dtype=dtype)
    derivatives = scale * torch.randn(1, bins - 1, features, dtype=dtype)
    return sizes, derivatives


def apply(
    x: torch.Tensor, sizes: torch.Tensor, derivatives: torch.Tensor, inverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The spline with the per-feature parameters broadcast over the rows of ``x``."""
    rows = x.shape[0]
    return rational_quadratic_spline(
        x,
        sizes.expand(rows, -1, -1, -1),
        derivatives.expand(rows, -1, -1),
        tail_bound=BOUND,
        inverse=inverse,
    )


def grid(features: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A fine sorted grid over [-5, 5] (both tails included) with ±B exactly on it, one column per feature."""
    points = torch.linspace(-5.0, 5.0, 2001, dtype=dtype)
    points = torch.cat((points, torch.tensor([-BOUND, BOUND], dtype=dtype))).unique()  # sorted
    return points.unsqueeze(1).expand(-1, features).contiguous()


@pytest.mark.parametrize("bins", [2, 4, 8])
def test_transform_is_monotone_bounded_and_identity_in_the_tails(bins: int) -> None:
    features = 16
    sizes, derivatives = spline_parameters(features, bins, scale=3.0)  # far from the identity
    x = grid(features)
    y, log_derivative = apply(x, sizes, derivatives)
    assert log_derivative is not None
    inside = x.abs() <= BOUND
    assert (y[1:] > y[:-1]).all(), "not strictly increasing"
    assert y[inside].abs().max() <= BOUND + 1e-12
    assert torch.allclose(y[x == BOUND], torch.full_like(y[x == BOUND], BOUND), rtol=0, atol=1e-12)
    assert torch.allclose(y[x == -BOUND], torch.full_like(y[x == -BOUND], -BOUND), rtol=0, atol=1e-12)
    assert torch.equal(y[~inside], x[~inside])
    assert torch.equal(log_derivative[~inside], torch.zeros_like(log_derivative[~inside]))
    # The map is not trivial inside: slopes spread well away from 1.
    assert log_derivative[inside].abs().max() > 0.5


def test_log_derivative_matches_autograd_and_is_zero_at_the_boundaries() -> None:
    features = 16
    sizes, derivatives = spline_parameters(features, bins=5, scale=2.0)
    x = grid(features).requires_grad_(True)
    y, log_derivative = apply(x, sizes, derivatives)
    assert log_derivative is not None
    (slope,) = torch.autograd.grad(y.sum(), x)  # elementwise map: d(sum y)/dx_i = dy_i/dx_i
    torch.testing.assert_close(log_derivative, slope.log(), atol=1e-9, rtol=0)
    # Boundary derivatives are 1: the spline joins the identity tails with matching slope (C¹).
    at_bound = x.detach().abs() == BOUND
    assert log_derivative[at_bound].abs().max() <= 1e-12


# Where a spline is very flat the inverse amplifies the rounding of y by 1 / slope (down to ~1e-6 for
# parameters of scale 2), so float32 is checked on milder parameters and the steep case in float64.
@pytest.mark.parametrize(
    "dtype, scale, tolerance",
    [(torch.float32, 0.5, 1e-5), (torch.float64, 0.5, 1e-13), (torch.float64, 2.0, 1e-9)],
)
def test_inverse_is_exact_on_the_grid_on_knots_and_in_the_tails(
    dtype: torch.dtype, scale: float, tolerance: float
) -> None:
    features, bins = 16, 6
    sizes, derivatives = spline_parameters(features, bins, scale=scale, dtype=dtype)
    knots = all_knots(sizes)
    x_knots, y_knots = knots[0], knots[1]
    x = torch.cat((grid(features, dtype), x_knots))
    y, _ = apply(x, sizes, derivatives)
    assert (apply(y, sizes, derivatives, inverse=True)[0] - x).abs().max() <= tolerance
    # Knots map onto knots in both directions.
    assert (apply(x_knots, sizes, derivatives)[0] - y_knots).abs().max() <= tolerance
    assert (apply(y_knots, sizes, derivatives, inverse=True)[0] - x_knots).abs().max() <= tolerance


def test_zero_parameters_give_the_identity() -> None:
    features, bins = 8, 4
    x = grid(features, torch.float32)
    sizes = torch.zeros(1, 2, bins, features)
    derivatives = torch.zeros(1, bins - 1, features)
    y, log_derivative = apply(x, sizes, derivatives)
    assert log_derivative is not None
    assert (y - x).abs().max() <= 1e-6
    assert log_derivative.abs().max() <= 1e-6


def test_minimum_sizes_and_derivative_are_respected() -> None:
    features, bins = 8, 4
    sizes, derivatives = spline_parameters(features, bins, scale=40.0)  # saturating parameters
    knots = all_knots(sizes, min_size=1e-2)
    assert knots.diff(dim=1).min() >= 2 * BOUND * 1e-2 * (1 - 1e-9)
    x = grid(features)
    _, log_derivative = rational_quadratic_spline(
        x,
        sizes.expand(x.shape[0], -1, -1, -1),
        derivatives.expand(x.shape[0], -1, -1),
        tail_bound=BOUND,
        min_bin_width=1e-2,
        min_bin_height=1e-2,
        min_derivative=1e-2,
    )
    assert log_derivative is not None and torch.isfinite(log_derivative).all()


def flow_inputs(dtype: torch.dtype) -> torch.Tensor:
    """N(0, 2²) rows (about 13 % of coordinates in the tails), unit vectors, and rows exactly on ±B and 0."""
    wide = 2.0 * torch.randn(BATCH - 64, DIM, dtype=dtype)
    unit = F.normalize(torch.randn(32, DIM, dtype=dtype), dim=1)
    edges = torch.tensor([-BOUND, BOUND, 0.0, -BOUND - 1e-3, BOUND + 1e-3], dtype=dtype)
    on_edges = edges[torch.randint(len(edges), (32, DIM))]
    return torch.cat((wide, unit, on_edges))


@pytest.mark.parametrize("feature_scale", [False, True])
def test_round_trip_at_init_float32_and_float64(feature_scale: bool) -> None:
    flow = SplineFlow(DIM, COND_DIM, BLOCKS, feature_scale=feature_scale)
    z, cond = flow_inputs(torch.float32), torch.randn(BATCH, COND_DIM)
    with torch.no_grad():
        if flow.feature_scale is not None:
            flow(torch.randn(BATCH, DIM), cond)  # sets the scale to ≈ 1, so the wide rows reach the tails
            assert (flow.feature_scale(z).abs() > BOUND).float().mean() > 0.05
        else:
            assert (z.abs() > BOUND).float().mean() > 0.1
        z_anon, logdet = flow(z, cond)
        assert torch.isfinite(logdet).all()
        assert (flow.inverse(z_anon, cond) - z).abs().max() <= 1e-5
        flow64 = flow.double()
        z64, cond64 = flow_inputs(torch.float64), cond.double()
        assert (flow64.inverse(flow64(z64, cond64)[0], cond64) - z64).abs().max() <= 1e-10


@pytest.mark.slow
def test_round_trip_after_training() -> None:
    """200 Adam steps of maximum likelihood on wide data plus an anonymity term bend the splines far from
    the identity; the round trip must stay exact."""
    torch.manual_seed(7)
    flow = SplineFlow(DIM, COND_DIM, BLOCKS)
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(200):
        z, cond = 2.0 * torch.randn(32, DIM), torch.randn(32, COND_DIM)
        z_anon, logdet = flow(z, cond)
        nll = 0.5 * z_anon.pow(2).sum(dim=1) - logdet
        loss = nll.mean() / DIM + F.cosine_similarity(z_anon, z, dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    z, cond = flow_inputs(torch.float32), torch.randn(BATCH, COND_DIM)
    with torch.no_grad():
        _, logdet = flow(z, cond)
        # About 0 at the near-identity init; maximum likelihood contracts the wide data.
        assert logdet.mean() < -0.1 * DIM, "training should have bent the splines substantially"
        assert (flow.inverse(flow(z, cond)[0], cond) - z).abs().max() <= 1e-5
        flow64 = flow.double()
        z64, cond64 = z.double(), cond.double()
        assert (flow64.inverse(flow64(z64, cond64)[0], cond64) - z64).abs().max() <= 1e-10


@pytest.mark.parametrize("feature_scale", [False, True])
def test_logdet_matches_autograd_jacobian(feature_scale: bool) -> None:
    dim, cond_dim, batch = 6, 3, 5
    flow = SplineFlow(dim, cond_dim, 3, hidden=(16, 8), feature_scale=feature_scale).double()
    flow(torch.randn(8, dim, dtype=torch.float64), torch.randn(8, cond_dim, dtype=torch.float64))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = 1.5 * torch.randn(batch, dim, dtype=torch.float64)  # some coordinates in the tails
    cond = torch.randn(batch, cond_dim, dtype=torch.float64)
    _, logdet = flow(z, cond)
    jacobian = torch.autograd.functional.jacobian(lambda x: flow(x, cond)[0], z)
    per_sample = jacobian[torch.arange(batch), :, torch.arange(batch), :]
    torch.testing.assert_close(logdet, torch.linalg.slogdet(per_sample).logabsdet, atol=1e-4, rtol=0)


def test_gradients_through_both_directions() -> None:
    """Training losses may back-propagate through the inverse (recovery) as well as the forward pass."""
    flow = SplineFlow(4, 2, 2, hidden=(8,)).double()
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    cond = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, c: flow(x, c)[0], (z, cond))
    assert torch.autograd.gradcheck(lambda x, c: flow(x, c)[1], (z, cond))
    assert torch.autograd.gradcheck(lambda x, c: flow.inverse(x, c), (z, cond))


def test_wrong_condition_does_not_invert() -> None:
    flow = SplineFlow(DIM, COND_DIM, BLOCKS)
    z = torch.randn(BATCH, DIM)
    key, wrong_key = torch.randn(BATCH, COND_DIM), torch.randn(BATCH, COND_DIM)
    with torch.no_grad():
        z_anon, _ = flow(z, key)
        right = (flow.inverse(z_anon, key) - z).abs().max()
        wrong = (flow.inverse(z_anon, wrong_key) - z).abs()
    assert right <= 1e-5
    assert wrong.max() > 2e-2 and wrong.mean() > 1e3 * right


def test_unconditional_float64() -> None:
    flow = SplineFlow(10, 0, 3, hidden=(16,)).double()
    z = 2.0 * torch.randn(7, 10, dtype=torch.float64)
    with torch.no_grad():
        assert (flow.inverse(flow(z)[0]) - z).abs().max() <= 1e-10


def test_feature_scale_normalises_unit_vectors_and_cancels_in_the_logdet() -> None:
    flow = SplineFlow(DIM, COND_DIM, BLOCKS)
    z, cond = F.normalize(torch.randn(BATCH, DIM), dim=1), torch.randn(BATCH, COND_DIM)
    with torch.no_grad():
        z_anon, logdet = flow(z, cond)  # the first training batch sets the scale
        scale = flow.feature_scale.scale
        assert torch.equal(scale.log2(), scale.log2().round()), "powers of two keep the scaling exact"
        assert math.sqrt(DIM) / 2 <= scale.median() <= 2 * math.sqrt(DIM)
        # Knots sit at O(1) positions; without the scale their rounding (~1e-7) would swamp coordinates
        # of ~0.04. With it, unit vectors round-trip about as tightly as through an affine flow.
        assert (flow.inverse(z_anon, cond) - z).abs().max() <= 3e-7
        # S⁻¹ ∘ G ∘ S: the output keeps the input's scale and the log-det is G's alone.
        u, expected = flow.feature_scale(z), torch.zeros(BATCH)
        for layer in flow.layers:
            u, ld = layer(u, cond)
            expected += ld
    torch.testing.assert_close(logdet, expected)
    torch.testing.assert_close(z_anon, flow.feature_scale.unscale(u))


def test_feature_scale_initialises_only_on_a_training_forward() -> None:
    z, cond = torch.randn(BATCH, 12), torch.randn(BATCH, 2)
    flow = SplineFlow(12, 2, 2, hidden=(8,))
    with torch.no_grad():
        flow.inverse(z, cond)  # never from anonymised data
        assert not flow.feature_scale.initialized
        assert torch.equal(flow.feature_scale.scale, torch.ones(12))
        flow.eval()
        flow(z, cond)
        assert not flow.feature_scale.initialized
        flow.train()
        flow(8.0 * z, cond)
        assert flow.feature_scale.initialized
        first = flow.feature_scale.scale.clone()
        flow(z, cond)  # later batches do not re-initialise
    assert torch.equal(first, torch.full((12,), 1 / 8))
    assert torch.equal(flow.feature_scale.scale, first)
    rebuilt = SplineFlow(12, 2, 2, hidden=(8,))
    rebuilt.load_state_dict(flow.state_dict())
    assert isinstance(rebuilt.feature_scale, FeatureScale)
    with torch.no_grad():
        rebuilt(z, cond)  # a loaded scale is kept, not re-initialised
    assert torch.equal(rebuilt.feature_scale.scale, first)


def test_structure_init_and_seeding() -> None:
    torch.manual_seed(0)
    flow = SplineFlow(10, 3, 2, bins=5, hidden=(12, 6), seed=4)
    kinds = [type(layer) for layer in flow.layers]
    assert kinds == [RQSplineCoupling, FixedPermutation] * 2
    coupling = flow.layers[0]
    linears = [m for m in coupling.subnet if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5 + 3, 12), (12, 6), (6, 5 * (3 * 5 - 1))]
    assert linears[-1].weight.abs().min() > 0, "the last layer must not be zero-initialised"
    assert torch.equal(flow.layers[1].perm, FixedPermutation(10, 4).perm)
    assert not torch.equal(flow.layers[1].perm, flow.layers[3].perm)
    assert "spline" in registry.available("flows")
    assert isinstance(registry.create("flows", "spline", dim=8, cond_dim=2, num_blocks=1), SplineFlow)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"bins": 1}, "bins >= 2"),
        ({"tail_bound": 0.0}, "tail_bound"),
        ({"bins": 4, "min_bin_width": 0.3}, "min_bin_width"),
        ({"min_derivative": 1.0}, "min_derivative"),
    ],
)
def test_bad_options_raise(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SplineFlow(8, 2, 2, **options)
