"""A keyed rotation of the identity's whitened principal coordinates.

    c = Uᵀ(z − μ)        (the ``rank`` principal coordinates of the training identities)
    z_anon = z + U (S R(key) S⁻¹ c − c)        R(key) orthogonal, R(key)ᵀ = −R(key)

``U``, ``S`` (square roots of the principal variances) and ``μ`` are fitted to training identities before
phase 2 (``fit_identities``): the Gaussian maximum-likelihood fit, which is what training a linear flow as a
density model converges to. In whitened coordinates the identities are roughly standard normal, and a
standard normal is invariant under every rotation, so an anonymized identity is distributed like a real
one whatever the key, and the renderer draws it as it draws real faces. Two keys give two independent
rotations, so their anonymizations of one face are as far apart as two random identities. The coordinates
outside the subspace (the face's own small residual) pass through unchanged; ``log|det J| = 0``.

Why not a learned coupling flow: the official ``allinone`` blocks add the key as a shift on a face-dependent
part, and on the SynthFaces quickstart two random user keys gave the same anonymized identity for about two
thirds of key pairs (docs/research.md, "Keyed rotation of the whitened identity").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ifadit.flows.base import KeyedFlow

#: training identities the fit reads (a covariance of a 128-d identity needs a few thousand)
IDENTITIES_TO_FIT = 4096


class WhitenedRotationFlow(KeyedFlow):
    """The key's rotation ``R = Q J Qᵀ`` of the whitened principal coordinates.

    ``Q`` is a product of ``rank`` Householder reflections whose vectors are a fixed random projection of
    the key condition (a buffer drawn at construction: the recipe's seed decides it, the checkpoint keeps
    it; the secret is the key, not the projection), a generic orthogonal matrix for each key. ``J`` turns
    every coordinate pair by a quarter turn, so ``R`` turns every whitened identity to one orthogonal to it:
    each key's anonymization is uncorrelated with the face, not only on average over keys (a generic
    rotation of 12 coordinates keeps ``trace(R)/12`` of the identity, ±0.29 from key to key). Two keys'
    anonymizations of a face are as far apart as two random identities.

    ``rank`` (even, at most ``dim``) coordinates are turned; with ``cond_dim=0`` the rotation is a fixed
    one. ``num_blocks`` is part of the flow contract; the rotation is one block. Until fitted, the flow
    turns the first ``rank`` coordinates. Nothing here learns by gradient.
    """

    def __init__(self, dim: int, cond_dim: int, num_blocks: int = 1, *, rank: int = 12) -> None:
        super().__init__(dim, cond_dim, num_blocks)
        if rank < 2 or rank % 2:
            raise ValueError(f"rank must be even and >= 2, got {rank}")
        self.rank = rank = min(rank, dim - dim % 2)
        inputs = max(cond_dim, 1)  # an unconditional flow projects a constant 1
        self.register_buffer("key_projection", torch.randn(rank * rank, inputs) / inputs**0.5)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.eye(dim, rank))
        self.register_buffer("scale", torch.ones(rank))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def identities_to_fit(self) -> int:
        return 0 if bool(self.fitted) else IDENTITIES_TO_FIT

    @torch.no_grad()
    def fit_identities(self, identities: Tensor) -> None:
        """Mean, principal directions and their standard deviations of ``identities`` (N, dim)."""
        if identities.dim() != 2 or identities.shape[1] != self.dim or identities.shape[0] <= self.rank:
            shape = tuple(identities.shape)
            raise ValueError(f"fitting needs identities of shape (N > {self.rank}, {self.dim}), got {shape}")
        z = identities.to(self.mean.device, torch.float64)
        mean = z.mean(dim=0)
        variances, directions = torch.linalg.eigh(torch.cov((z - mean).T))
        top = variances.argsort(descending=True)[: self.rank]
        self.mean.copy_(mean)
        self.basis.copy_(directions[:, top])
        self.scale.copy_(variances[top].clamp_min(1e-12).sqrt())
        self.fitted.fill_(True)

    def _reflections(self, u: Tensor, vectors: Tensor, order: range) -> Tensor:
        for i in order:  # one batched Householder step u - 2 v (v . u) per vector
            v = vectors[:, i]
            u = u - 2.0 * v * (v * u).sum(dim=1, keepdim=True)
        return u

    def _turn(self, u: Tensor, cond: Tensor | None, inverse: bool) -> Tensor:
        """``R u`` with ``R = Q J Qᵀ`` (``Rᵀ = −R`` for the inverse): ``Q`` the key's product of reflections,
        ``J`` a quarter turn in each coordinate pair."""
        if cond is None:
            cond = u.new_ones(u.shape[0], 1)
        vectors = F.normalize((cond @ self.key_projection.T).view(-1, self.rank, self.rank), dim=-1)
        forward, backward = range(self.rank), range(self.rank - 1, -1, -1)
        u = self._reflections(u, vectors, forward)  # Qᵀ u with Qᵀ = H_rank ⋯ H_1 (H_1 applied first)
        pairs = u.view(u.shape[0], -1, 2)
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(1)  # J u
        return self._reflections(-turned if inverse else turned, vectors, backward)

    def _basis(self, dtype: torch.dtype) -> Tensor:
        # Orthonormal to the compute precision (the stored basis is only as orthonormal as its dtype), so
        # the part outside the subspace passes through exactly and the inverse is exact in float64 too.
        return torch.linalg.qr(self.basis.to(dtype)).Q

    def whitened(self, z: Tensor) -> Tensor:
        """The whitened principal coordinates ``S⁻¹ Uᵀ(z − μ)`` (B, rank) the key turns."""
        return (z - self.mean.to(z.dtype)) @ self._basis(z.dtype) / self.scale.to(z.dtype)

    def shift_whitened(self, z: Tensor, change: Tensor) -> Tensor:
        """``z`` with ``change`` (B, rank) added to its whitened principal coordinates, the rest kept."""
        return z + (change * self.scale.to(z.dtype)) @ self._basis(z.dtype).T

    def _rotate(self, z: Tensor, cond: Tensor | None, inverse: bool) -> Tensor:
        coordinates = self.whitened(z)
        return self.shift_whitened(z, self._turn(coordinates, cond, inverse) - coordinates)

    def _forward(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._rotate(z, cond, inverse=False), z.new_zeros(z.shape[0])

    def _inverse(self, z: Tensor, cond: Tensor | None) -> Tensor:
        return self._rotate(z, cond, inverse=True)
