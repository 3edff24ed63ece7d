"""Flow building blocks shared by the built-in flows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ifadit.flows.base import FlowLayer


def mlp(in_features: int, hidden: Sequence[int], out_features: int, negative_slope: float = 0.01) -> nn.Sequential:
    """A coupling subnet: Linear/LeakyReLU stack (the official iFADIT subnet is one of these)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(negative_slope)]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def seeded_permutation(dim: int, seed: int) -> Tensor:
    """A fixed random permutation from a private generator, so a rebuilt flow gets the same one."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(dim, generator=generator)


class FixedPermutation(FlowLayer):
    """Shuffles coordinates by a permutation stored as a buffer (saved in the state dict); log-det is 0."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        perm = seeded_permutation(dim, seed)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None) -> Tensor:
        return y[:, self.inv_perm]
