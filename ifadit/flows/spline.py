"""Conditional rational-quadratic neural spline flow (Durkan, Bekasov, Murray, Papamakarios 2019).

Each coupling keeps one half of the vector, feeds it (plus the condition) to a subnet, and bends every
coordinate of the other half through its own monotone rational-quadratic spline on ``[-B, B]``; outside
that interval the map is the identity ("linear tails"), and the boundary slopes are exactly 1 so the map
is C¹ there. Both directions and the log-derivative are closed-form, so the round trip is exact to float
rounding everywhere, tails included.

Scale: ``tail_bound`` B = 3 covers 99.7 % of a unit-variance coordinate, so N(0, 1) inputs use every bin
(and the rest pass through the exact identity tails). L2-normalised 512-d identity vectors, though, have
coordinates of about ±0.05–0.2: on their own they would sit in the middle bins only, and because the knots
live at O(1) positions the absolute rounding error (~1e-7) would be large relative to them. So by default
the chain runs inside a per-feature scale S that the first training batch sets to about unit variance
(:class:`FeatureScale`, ActNorm's init without the shift, in exact powers of two): the flow is
``S⁻¹ ∘ G ∘ S``, ``z_anon`` keeps the input's scale, the log-det is exactly G's, and unit vectors
round-trip to ~5e-8 like an affine flow.

Cost: a spline subnet emits ``dim/2 · (3K − 1)`` numbers and the elementwise work grows with K, so the
defaults (K = 4, hidden 128→64→48) are sized to cost about what one of the paper's FrEIA
``AllInOneBlock`` s (subnet 768→256→128→128→256→512) does at dim 512; see benchmarks/.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifadit.flows.base import FlowLayer, SequentialFlow
from ifadit.flows.layers import FixedPermutation, mlp


@functools.lru_cache(maxsize=64)
def _knot_matrix(
    bins: int, bound: float, min_sizes: tuple[float, float], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """The fixed linear map (2, K−1, K) from softmax bin fractions f to the interior x- and y-knots.

    Knot k (0 < k < K) is −B + 2B·(min·k + (1 − min·K)·Σ_{j<k} f_j), so every bin keeps at least 2B·min;
    because Σ f = 1 the constant part folds into the matrix too, and cumsum + affine become one small
    batched matmul (cheaper on CPU than a cumsum and an affine pass). The end knots ±B are not stored:
    they are exact constants, blended in where a bin touches them.
    """
    steps = torch.arange(1, bins, dtype=torch.float64).view(-1, 1)
    strictly_lower = (steps > torch.arange(bins, dtype=torch.float64).view(1, -1)).double()
    matrices = [
        2.0 * bound * (1.0 - min_size * bins) * strictly_lower + (-bound + 2.0 * bound * min_size * steps)
        for min_size in min_sizes
    ]
    return torch.stack(matrices).to(dtype=dtype, device=device)


def _knot_table(fractions: Tensor, bound: float, min_sizes: tuple[float, float]) -> Tensor:
    """Softmax bin fractions (N, 2, K, D) → interior knots (N, 2, K−1, D): x-knots and y-knots."""
    batch, _, bins, features = fractions.shape
    matrix = _knot_matrix(bins, float(bound), min_sizes, fractions.dtype, fractions.device)
    matrix = matrix.expand(batch, -1, -1, -1).reshape(batch * 2, bins - 1, bins)
    knots = torch.bmm(matrix, fractions.reshape(batch * 2, bins, features))
    return knots.view(batch, 2, bins - 1, features)


def _blend(mask: Tensor, chosen: Tensor, other: Tensor) -> Tensor:
    """``where(mask, chosen, other)`` for a 0/1 float mask, as one cheap op (``torch.where`` is several
    times slower on CPU). Exact: ``lerp`` evaluates weight 1 as ``end − (end − start)·0`` and weight 0
    as ``start + 0·(end − start)``, so both ends come out bit for bit for finite inputs."""
    return torch.lerp(other, chosen, mask)


class BinParameters(NamedTuple):
    """What the RQ formula needs per element, besides the knot slopes: the bin each input falls in."""

    inputs: Tensor  # (N, D) as given
    clamped: Tensor  # (N, D) inputs clamped to [-B, B]
    inside: Tensor  # (N, D) 0/1 float: |input| ≤ B
    knot_index: Tensor  # (N, 2, D) long: the bin's left and right knot among the interior ones, clamped
    at_bound: Tensor  # (N, 2, D) 0/1 float: that knot is the boundary −B (left) or +B (right) instead
    x_lo: Tensor  # (N, D) left knot
    y_lo: Tensor  # (N, D) its image
    width: Tensor  # (N, D) bin width
    height: Tensor  # (N, D) bin height


def spline_knots(
    unnormalized_sizes: Tensor,
    *,
    tail_bound: float,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
) -> Tensor:
    """Unnormalised bin widths and heights (N, 2, K, D) → interior knots (N, 2, K−1, D) in (-B, B).

    The bin axis sits before the feature axis because softmax, the knot sums and the bin search along it
    are several times faster on CPU than along a short last axis.
    """
    min_sizes = (float(min_bin_width), float(min_bin_height))
    return _knot_table(torch.softmax(unnormalized_sizes, dim=2), tail_bound, min_sizes)


def locate_bins(inputs: Tensor, knots: Tensor, *, tail_bound: float, inverse: bool = False) -> BinParameters:
    """Finds each input's bin (by the x-knots forward, the y-knots inverse) and gathers the bin's ends."""
    bound = tail_bound
    bins = knots.shape[2] + 1
    with torch.no_grad():
        limited = inputs.clamp(-bound, bound)  # the tails compute harmlessly and are blended away later
        inside = torch.eq(limited, inputs, out=torch.empty_like(inputs))  # 0/1 float mask (bool is slower)
        # The bin is the number of interior knots ≤ the input (0 … K−1), i.e. ``searchsorted(right=True)``
        # written as one broadcast compare + sum along the bin axis: vectorised, and several times faster
        # here than ``torch.searchsorted`` (which wants the bins on the last axis); ±B land in the end bins.
        search = knots[:, 1 if inverse else 0]
        bin_index = torch.ge(limited.unsqueeze(1), search, out=torch.empty_like(search)).sum(dim=1)
        # Bin k spans interior knots k−1 … k; −1 and K−1 stand for the boundaries ±B.
        ends = bin_index.unsqueeze(1) + inputs.new_tensor([-1.0, 0.0]).view(1, 2, 1)
        knot_index = ends.clamp(0, bins - 2)
        at_bound = torch.ne(knot_index, ends, out=torch.empty_like(ends))
        knot_index = knot_index.long()
    # Equal to ``limited`` bit for bit inside [-B, B], but with gradient 1 at exactly ±B (clamp passes 0).
    clamped = inputs + (limited - inputs.detach()) if torch.is_grad_enabled() else limited
    # One gather for the x- and y-knots at both ends of the bin; the 0/1 blend with ±B is exact.
    bin_knots = knots.gather(2, knot_index.unsqueeze(1).expand(-1, 2, -1, -1))  # (N, xy, lo/hi, D)
    at_bound = at_bound.unsqueeze(1)
    bin_knots = torch.addcmul(
        bin_knots * (1.0 - at_bound), at_bound, inputs.new_tensor([-bound, bound]).view(2, 1)
    )
    x_lo, y_lo = bin_knots[:, :, 0].unbind(1)
    width, height = (bin_knots[:, :, 1] - bin_knots[:, :, 0]).unbind(1)
    return BinParameters(inputs, clamped, inside, knot_index, at_bound.squeeze(1), x_lo, y_lo, width, height)


def knot_slopes(
    unnormalized_derivatives: Tensor, bins: BinParameters, *, min_derivative: float = 1e-3
) -> Tensor:
    """The slopes (N, 2, D) at the bin's two knots, from the interior knots' parameters (N, K−1, D).

    The positive map is ``1 + (1 − min)·(squareplus(u) − 1)`` with squareplus(u) = (u + √(u² + 4)) / 2, a
    smooth softplus look-alike without exp/log (about 3× cheaper here). It stays above ``min_derivative``
    and is exactly 1 at u = 0, so all-zero parameters give the identity; the boundary knots ±B get slope
    1 bit for bit (the identity tails' slope) through the 0/1 mask.
    """
    raw = unnormalized_derivatives.gather(1, bins.knot_index)
    scale = (1.0 - bins.at_bound).mul_(0.5 * (1.0 - min_derivative))
    return (raw + torch.sqrt(raw * raw + 4.0)).sub_(2.0).mul_(scale).add_(1.0)


def evaluate_spline(
    bins: BinParameters, derivatives: Tensor, inverse: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The RQ map (or its inverse) in the located bins: ``(outputs, log|dy/dx| or None)``.

    The log-derivative is only computed forward: the inverse of a flow needs no log-det.
    """
    d_lo, d_hi = derivatives.unbind(1)
    slope = bins.height / bins.width
    curvature = torch.sub(derivatives.sum(dim=1), slope, alpha=2.0)  # δ_k + δ_{k+1} − 2s

    if inverse:
        # Solve a·ξ² + b·ξ + c = 0 for ξ ∈ [0, 1] in the cancellation-free form 2c / (−b − √(b² − 4ac)).
        offset = bins.clamped - bins.y_lo
        a = torch.addcmul(offset * curvature, bins.height, slope - d_lo)
        b = torch.addcmul(-offset * curvature, bins.height, d_lo)
        c = -slope * offset
        discriminant = torch.addcmul(b * b, a, c, value=-4.0).clamp_min(0.0)
        xi = (2.0 * c) / (-b - torch.sqrt(discriminant))
        return _blend(bins.inside, torch.addcmul(bins.x_lo, xi, bins.width), bins.inputs), None

    xi = (bins.clamped - bins.x_lo) / bins.width
    one_minus_xi = 1.0 - xi
    xi_one_minus = xi * one_minus_xi
    denominator = torch.addcmul(slope, curvature, xi_one_minus)
    xi_squared = xi * xi
    numerator = torch.addcmul(slope * xi_squared, d_lo, xi_one_minus)
    outputs = torch.addcdiv(bins.y_lo, bins.height * numerator, denominator)
    derivative_numerator = torch.addcmul(d_hi * xi_squared, slope, xi_one_minus, value=2.0)
    derivative_numerator = torch.addcmul(derivative_numerator, d_lo, one_minus_xi * one_minus_xi)
    ratio = slope / denominator
    log_derivative = torch.log(ratio * ratio * derivative_numerator)
    return _blend(bins.inside, outputs, bins.inputs), log_derivative * bins.inside


def rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_sizes: Tensor,
    unnormalized_derivatives: Tensor,
    *,
    tail_bound: float,
    inverse: bool = False,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor | None]:
    """Elementwise monotone RQ spline on [-B, B], identity outside: ``(outputs, log|dy/dx| or None)``.

    Shapes: ``inputs`` (N, D); ``unnormalized_sizes`` (N, 2, K, D), bin widths then bin heights;
    ``unnormalized_derivatives`` (N, K−1, D). The three stages are separate functions so a caller can
    drop the large knot table before the elementwise work (see :class:`RQSplineCoupling`).
    """
    knots = spline_knots(
        unnormalized_sizes, tail_bound=tail_bound, min_bin_width=min_bin_width, min_bin_height=min_bin_height
    )
    located = locate_bins(inputs, knots, tail_bound=tail_bound, inverse=inverse)
    derivatives = knot_slopes(unnormalized_derivatives, located, min_derivative=min_derivative)
    return evaluate_spline(located, derivatives, inverse)


class RQSplineCoupling(FlowLayer):
    """Keeps the first ``dim // 2`` coordinates; splines the rest, conditioned on them and on ``cond``."""

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        *,
        bins: int,
        tail_bound: float,
        hidden: Sequence[int],
        min_bin_width: float,
        min_bin_height: float,
        min_derivative: float,
        init_scale: float,
    ) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(f"a spline needs bins >= 2, got {bins}")
        if tail_bound <= 0:
            raise ValueError(f"tail_bound must be > 0, got {tail_bound}")
        if not (0 <= min_bin_width * bins < 1 and 0 <= min_bin_height * bins < 1):
            raise ValueError("min_bin_width and min_bin_height must lie in [0, 1 / bins)")
        if not 0 <= min_derivative < 1:
            raise ValueError(f"min_derivative must lie in [0, 1), got {min_derivative}")
        self.split = dim // 2
        self.transformed = dim - self.split
        self.bins = bins
        self.tail_bound = float(tail_bound)
        self.min_bin_width = float(min_bin_width)
        self.min_bin_height = float(min_bin_height)
        self.min_derivative = float(min_derivative)
        self.subnet = mlp(self.split + cond_dim, hidden, self.transformed * (3 * bins - 1))
        # Small but not zero: near the identity for stable training, yet already key-dependent, so a wrong
        # key does not invert an untrained flow.
        last = self.subnet[-1]
        with torch.no_grad():
            last.weight.mul_(init_scale)
            last.bias.mul_(init_scale)

    def _spline(self, x: Tensor, cond: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor | None]:
        kept, moving = x[:, : self.split], x[:, self.split :]
        hidden = kept if cond is None else torch.cat((kept, cond), dim=1)
        *trunk, last = self.subnet
        for layer in trunk:
            hidden = layer(hidden)
        # The last layer runs as two matmuls over row blocks of its weight so that the bin sizes and the
        # slopes each come out contiguous (a softmax over a strided view copies it first). Output layout
        # is parameter-major: (B, [widths | heights], K, D/2), then (B, K−1, D/2). The stages are ordered
        # so that at most two table-sized temporaries (MBs at batch 256) live at once: on CPU that cuts
        # memory traffic and the heap growth that glibc would otherwise trim and re-fault every call.
        batch, bins, n_sizes = x.shape[0], self.bins, 2 * self.bins * self.transformed
        fractions = torch.softmax(
            F.linear(hidden, last.weight[:n_sizes], last.bias[:n_sizes]).view(batch, 2, bins, -1), dim=2
        )
        knots = _knot_table(fractions, self.tail_bound, (self.min_bin_width, self.min_bin_height))
        del fractions
        located = locate_bins(moving, knots, tail_bound=self.tail_bound, inverse=inverse)
        del knots
        derivatives = knot_slopes(
            F.linear(hidden, last.weight[n_sizes:], last.bias[n_sizes:]).view(batch, bins - 1, -1),
            located,
            min_derivative=self.min_derivative,
        )
        moved, log_derivative = evaluate_spline(located, derivatives, inverse)
        return torch.cat((kept, moved), dim=1), log_derivative

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        y, log_derivative = self._spline(x, cond, inverse=False)
        assert log_derivative is not None
        return y, log_derivative.sum(dim=1)

    def inverse(self, y: Tensor, cond: Tensor | None) -> Tensor:
        return self._spline(y, cond, inverse=True)[0]


class FeatureScale(nn.Module):
    """A per-feature power-of-two scale that the first training batch sets to about 1 / std, so the
    splines see roughly unit-variance coordinates whatever the input scale (ActNorm's data-dependent
    init, without the shift). Powers of two make scaling and unscaling exact in floating point, so the
    scale adds nothing to the round-trip error; it is a buffer, not trained.

    ``initialized`` is a buffer too, so a loaded model never re-initialises; a Python mirror avoids
    reading it (a device sync) on every call.
    """

    def __init__(self, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False
        self.register_load_state_dict_post_hook(FeatureScale._sync_initialized)

    @staticmethod
    def _sync_initialized(module: FeatureScale, incompatible_keys: object) -> None:
        module._initialized = bool(module.initialized)

    def maybe_initialize(self, x: Tensor) -> None:
        """Sets the scale from ``x`` on the first training batch (a single sample has no spread: wait)."""
        if self.training and not self._initialized and x.shape[0] > 1:
            with torch.no_grad():
                std = x.double().std(dim=0, unbiased=False)
                self.scale.copy_(torch.exp2(-torch.round(torch.log2(std + self.eps))))
                self.initialized.fill_(True)
            self._initialized = True

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale

    def unscale(self, u: Tensor) -> Tensor:
        return u / self.scale


class SplineFlow(SequentialFlow):
    """``num_blocks`` × (RQ-spline coupling → fixed seeded permutation), inside a data-set rescaling.

    With ``feature_scale`` (default) the flow is ``S⁻¹ ∘ G ∘ S``: S scales each feature to about unit
    variance (powers of two set from the first training batch), G is the spline chain, and S⁻¹ restores
    the input scale, so ``z_anon`` lives where ``z`` does and the log-det is exactly G's (S's cancels);
    the module docstring says why. ``seed`` fixes the permutations (the subnet weights follow the global
    torch RNG like any module); ``init_scale`` shrinks each subnet's last layer at construction: a
    near-identity start that is already key-dependent.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        num_blocks: int,
        *,
        bins: int = 4,
        tail_bound: float = 3.0,
        hidden: Sequence[int] = (128, 64, 48),
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
        feature_scale: bool = True,
        init_scale: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__(dim, cond_dim, num_blocks, [])  # validates dim / cond_dim / num_blocks first
        for block in range(num_blocks):
            coupling = RQSplineCoupling(
                dim,
                cond_dim,
                bins=bins,
                tail_bound=tail_bound,
                hidden=tuple(hidden),
                min_bin_width=min_bin_width,
                min_bin_height=min_bin_height,
                min_derivative=min_derivative,
                init_scale=init_scale,
            )
            self.layers.extend([coupling, FixedPermutation(dim, seed + block)])
        self.feature_scale = FeatureScale(dim) if feature_scale else None

    def _forward(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.feature_scale is None:
            return super()._forward(z, cond)
        self.feature_scale.maybe_initialize(z)
        u, logdet = super()._forward(self.feature_scale(z), cond)
        return self.feature_scale.unscale(u), logdet

    def _inverse(self, z: Tensor, cond: Tensor | None) -> Tensor:
        if self.feature_scale is None:
            return super()._inverse(z, cond)
        return self.feature_scale.unscale(super()._inverse(self.feature_scale(z), cond))
