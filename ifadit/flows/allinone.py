"""The official iFADIT flow: FrEIA's ``AllInOneBlock`` (default arguments) stacked in a ``SequenceINN``.

Written from FrEIA's documented semantics, not its code, so that the released ``G_net_*.pth`` loads by key
name (``module_list.<i>.{global_scale, global_offset, w_perm, w_perm_inv, subnet.*}``) with ``strict=True``
and gives the same numbers, without FrEIA as a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ifadit.flows.base import FlowLayer, SequentialFlow
from ifadit.flows.layers import mlp, permutation_index, tensor_version_key

OFFICIAL_HIDDEN: tuple[int, ...] = (256, 128, 128, 256)
SOFTPLUS_BETA = 0.5
GLOBAL_SCALE_FACTOR = 0.1  # FrEIA's SOFTPLUS activation: 0.1 * softplus(a, beta=0.5)
COUPLING_FACTOR = 0.1  # FrEIA scales the whole subnet output by 0.1 "for stability"


class AllInOneCoupling(FlowLayer):
    """One ``AllInOneBlock``: soft-clamped affine coupling of the second half, a softplus-parametrised
    global affine, then a fixed hard permutation.

    ``w_perm``/``w_perm_inv`` stay dense matrices because that is the checkpoint layout, but they are
    applied as index gathers (exact, and O(dim) instead of a dim×dim matmul per sample).
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        hidden: Sequence[int] = OFFICIAL_HIDDEN,
        clamp: float = 2.0,
        global_affine_init: float = 1.0,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if clamp <= 0:
            raise ValueError(f"clamp must be > 0, got {clamp}")
        if global_affine_init <= 0:
            raise ValueError(f"global_affine_init must be > 0, got {global_affine_init}")
        self.passive = dim - dim // 2
        self.active = dim // 2
        self.clamp = clamp
        # Inverse of the activation at global_affine_init: 0.1 * softplus_{beta=0.5}(a) == init.
        init = 2.0 * math.log(math.expm1(SOFTPLUS_BETA * global_affine_init / GLOBAL_SCALE_FACTOR))
        self.global_scale = nn.Parameter(torch.full((1, dim), init))
        self.global_offset = nn.Parameter(torch.zeros(1, dim))
        perm = torch.randperm(dim)
        w_perm = torch.zeros(dim, dim)
        w_perm[torch.arange(dim), perm] = 1.0
        self.register_buffer("w_perm", w_perm)
        self.register_buffer("w_perm_inv", w_perm.T.contiguous())
        self.register_buffer("_index", perm, persistent=False)
        self.register_buffer("_inverse_index", torch.argsort(perm), persistent=False)
        self._index_key = self._matrices_key()
        self.subnet = mlp(self.passive + cond_dim, hidden, 2 * self.active, negative_slope)

    def _matrices_key(self) -> tuple:
        return tensor_version_key(self.w_perm), tensor_version_key(self.w_perm_inv)

    def _indices(self) -> tuple[Tensor, Tensor]:
        """Gather indices, re-derived whenever the matrices were replaced (e.g. by ``load_state_dict``)."""
        key = self._matrices_key()
        if key != self._index_key:
            with torch.inference_mode(False):  # usable by later calls that need autograd
                self._index = permutation_index(self.w_perm)
                self._inverse_index = permutation_index(self.w_perm_inv)
            self._index_key = key
        return self._index, self._inverse_index

    def _global_scale(self) -> Tensor:
        return GLOBAL_SCALE_FACTOR * F.softplus(self.global_scale, beta=SOFTPLUS_BETA)

    def _log_scale_shift(self, x_passive: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        inputs = x_passive if cond is None else torch.cat((x_passive, cond), dim=1)
        a = self.subnet(inputs) * COUPLING_FACTOR
        return self.clamp * torch.tanh(a[:, : self.active]), a[:, self.active :]

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        index, _ = self._indices()
        x_passive, x_active = x[:, : self.passive], x[:, self.passive :]
        log_scale, shift = self._log_scale_shift(x_passive, cond)
        coupled = torch.cat((x_passive, x_active * torch.exp(log_scale) + shift), dim=1)
        scale = self._global_scale()
        y = (coupled * scale + self.global_offset)[:, index]
        return y, log_scale.sum(dim=1) + torch.log(scale).sum()

    def inverse(self, y: Tensor, cond: Tensor | None) -> Tensor:
        _, inverse_index = self._indices()
        coupled = (y[:, inverse_index] - self.global_offset) / self._global_scale()
        y_passive, y_active = coupled[:, : self.passive], coupled[:, self.passive :]
        log_scale, shift = self._log_scale_shift(y_passive, cond)
        return torch.cat((y_passive, (y_active - shift) * torch.exp(-log_scale)), dim=1)


class AllInOneFlow(SequentialFlow):
    """``num_blocks`` AllInOne blocks; with the defaults (``hidden=(256, 128, 128, 256)``, clamp 2.0,
    global affine init 1.0) at dim 512 / cond 512 this is exactly the official iFADIT flow.

    The module list is named ``module_list`` as in FrEIA's ``SequenceINN`` so checkpoints load by name.
    """

    layer_list_name = "module_list"

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        num_blocks: int,
        hidden: Sequence[int] = OFFICIAL_HIDDEN,
        clamp: float = 2.0,
        global_affine_init: float = 1.0,
    ) -> None:
        init = global_affine_init
        blocks = (AllInOneCoupling(dim, cond_dim, hidden, clamp, init) for _ in range(num_blocks))
        super().__init__(dim, cond_dim, num_blocks, blocks)
        self.hidden = tuple(hidden)
        self.clamp = clamp
