"""RealNVP on vectors: conditional affine couplings with fixed, seeded permutations between them."""

from __future__ import annotations

from collections.abc import Sequence

from ifadit.flows.base import FlowLayer, SequentialFlow
from ifadit.flows.layers import AffineCoupling, FixedPermutation


class RealNVPFlow(SequentialFlow):
    """RealNVP (Dinh et al. 2017) with soft-clamped scales, the key concatenated to every subnet input.

    Permutations are seeded by block index, not drawn from the global RNG, so every RealNVPFlow of a given
    size shuffles alike; they are buffers all the same, so a checkpoint carries them.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        num_blocks: int,
        hidden: Sequence[int] = (256, 256),
        clamp: float = 2.0,
    ) -> None:
        layers: list[FlowLayer] = []
        for block in range(num_blocks):
            if block > 0:
                layers.append(FixedPermutation(dim, seed=block))
            layers.append(AffineCoupling(dim, cond_dim, hidden, clamp))
        super().__init__(dim, cond_dim, num_blocks, layers)
        self.hidden = tuple(hidden)
        self.clamp = clamp
