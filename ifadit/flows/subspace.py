"""A keyed flow that acts only where real identities vary: the principal subspace of identity embeddings.

Why: a small generator renders an identity vector through the few directions real identities span (the
quickstart's 128-d embeddings hold 97 % of their variance in 16 directions) and ignores the rest. A flow
on all 128 dimensions sent anonymized identities mostly into the ignored directions (only 36 % of their
variance in the top 8), so the anonymized face did not show the anonymized identity, the identity read
back from it was wrong in exactly those directions, and the inverse flow carried that error into the
recovered identity (measured: fixing the read-back error outside the top 8 directions alone lifted the
judge's recovery cosine from 0.63 to 0.78, against 0.79 for a perfect read-back).

:class:`SubspaceFlow` therefore runs the keyed flow on the whitened coordinates of ``z`` in the top
``rank`` principal directions and passes the remainder through unchanged. It is still exactly invertible,
and its log-determinant is the inner flow's (the map is block-diagonal in the principal basis, the
remainder block the identity). The basis is fitted from real identity embeddings at the start of
training (:meth:`~ifadit.task.IFADITTask.on_fit_start`) and saved with the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ifadit.flows.base import KeyedFlow


class PrincipalSubspace(nn.Module):
    """Mean, top ``rank`` principal directions and their standard deviations of identity embeddings.

    ``whiten``: coordinates divided by each direction's own deviation (unit variance in every direction);
    otherwise by one common deviation, so weak directions stay small and their read-back errors are not
    magnified."""

    def __init__(
        self, dim: int, rank: int, fit_images: int = 2048, whiten: bool = True, eps: float = 1e-6
    ) -> None:
        super().__init__()
        if not 1 <= rank <= dim:
            raise ValueError(f"rank must be between 1 and dim ({dim}), got {rank}")
        if fit_images < rank + 1:
            raise ValueError(f"fit_images must exceed rank ({rank}) to estimate {rank} directions")
        self.dim, self.rank, self.fit_images, self.whiten, self.eps = dim, rank, fit_images, whiten, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.eye(dim, rank))  # (dim, rank), orthonormal columns
        self.register_buffer("scale", torch.ones(rank))  # standard deviation along each direction
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, embeddings: Tensor) -> None:
        """Principal directions of ``embeddings`` (N, dim), N > rank, via an SVD of the centred data."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (N, {self.dim}), got {tuple(embeddings.shape)}")
        if embeddings.shape[0] <= self.rank:
            raise ValueError(f"{embeddings.shape[0]} embeddings cannot span {self.rank} directions")
        data = embeddings.to(torch.float64)
        mean = data.mean(dim=0)
        _, singular, vh = torch.linalg.svd(data - mean, full_matrices=False)
        std = singular[: self.rank] / (data.shape[0] - 1) ** 0.5
        if not self.whiten:
            std = std.pow(2).mean().sqrt().expand(self.rank)
        self.mean.copy_(mean)
        self.basis.copy_(vh[: self.rank].T)
        self.scale.copy_(std.clamp_min(self.eps))
        self.fitted.fill_(True)

    def explained_variance(self, embeddings: Tensor) -> float:
        """The share of the variance of ``embeddings`` about the fitted mean that lies in the subspace."""
        centred = embeddings.to(self.mean.dtype) - self.mean
        return float((centred @ self.basis).pow(2).sum() / centred.pow(2).sum())

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(coords, rest)``: whitened coordinates (B, rank) and the part outside the subspace (B, dim)."""
        if not bool(self.fitted):
            raise RuntimeError(
                "the identity subspace is not fitted: phase 2 fits it from training faces when it starts"
            )
        centred = z - self.mean.to(z.dtype)
        projection = centred @ self.basis.to(z.dtype)
        rest = centred - projection @ self.basis.T.to(z.dtype)
        return projection / self.scale.to(z.dtype), rest

    def join(self, coords: Tensor, rest: Tensor) -> Tensor:
        """The inverse of :meth:`split`."""
        projection = coords * self.scale.to(coords.dtype)
        return self.mean.to(coords.dtype) + projection @ self.basis.T.to(coords.dtype) + rest


class SubspaceFlow(KeyedFlow):
    """``flow`` (built with ``dim = subspace.rank``) on the whitened principal coordinates of ``z``."""

    def __init__(self, flow: KeyedFlow, subspace: PrincipalSubspace) -> None:
        if flow.dim != subspace.rank:
            raise ValueError(
                f"the flow works on {flow.dim}-d vectors but the identity subspace has rank {subspace.rank}"
            )
        super().__init__(subspace.dim, flow.cond_dim, flow.num_blocks)
        self.flow = flow
        self.subspace = subspace

    def _forward(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        coords, rest = self.subspace.split(z)
        moved, logdet = self.flow(coords, cond)
        return self.subspace.join(moved, rest), logdet

    def _inverse(self, z: Tensor, cond: Tensor | None) -> Tensor:
        coords, rest = self.subspace.split(z)
        return self.subspace.join(self.flow.inverse(coords, cond), rest)


__all__ = ["PrincipalSubspace", "SubspaceFlow"]
