"""The keyed-flow contract every flow (built-in or plugin) implements.

A flow maps an identity vector ``z`` (B, dim) under a condition ``cond`` (B, cond_dim) — the key scheme's
output — to ``z_anon`` and the per-sample ``log|det J|``; ``inverse`` undoes it exactly. Flows are built
with the same keywords (``dim``, ``cond_dim``, ``num_blocks`` plus optional ones of their own) so a recipe
can swap them by name.

Numerics: the flow always computes in float32 or float64, never in half precision — the round trip has to
be exact to ~1e-6, which bf16/fp16 cannot hold. ``forward``/``inverse`` therefore switch autocast off and
lift half-precision inputs to the flow's parameter dtype.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch
from torch import Tensor, nn


def _compute_dtype(module: nn.Module) -> torch.dtype:
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    for tensor in module.buffers():
        if tensor.is_floating_point():
            return tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.float32


class FlowLayer(nn.Module, ABC):
    """One invertible step: ``forward(x, cond) -> (y, logdet)``, ``inverse(y, cond) -> x``."""

    @abstractmethod
    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]: ...

    @abstractmethod
    def inverse(self, y: Tensor, cond: Tensor | None) -> Tensor: ...


class KeyedFlow(nn.Module, ABC):
    """Base class of all flows; subclasses implement ``_forward`` and ``_inverse``.

    ``cond_dim=0`` builds an unconditional flow (``cond`` must then be ``None``); composite flows such as
    the keyed-rotation plugin use that for their base density.
    """

    def __init__(self, dim: int, cond_dim: int, num_blocks: int) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a flow needs dim >= 2, got {dim}")
        if cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0, got {cond_dim}")
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.dim = dim
        self.cond_dim = cond_dim
        self.num_blocks = num_blocks

    @abstractmethod
    def _forward(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]: ...

    @abstractmethod
    def _inverse(self, z: Tensor, cond: Tensor | None) -> Tensor: ...

    @property
    def identities_to_fit(self) -> int:
        """How many training identities ``fit_identities`` wants before phase 2 (0: nothing to fit, as for
        every flow that learns by gradient alone). The task fits the flow when phase 2 starts."""
        return 0

    def fit_identities(self, identities: Tensor) -> None:
        """Fit statistics of the training identities (N, dim); only flows with ``identities_to_fit``."""
        raise NotImplementedError(f"{type(self).__name__} fits nothing to identities")

    def _prepare(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected z of shape (batch, {self.dim}), got {tuple(z.shape)}")
        dtype = _compute_dtype(self)
        z = z.to(dtype)
        if self.cond_dim == 0:
            if cond is not None:
                raise ValueError("this flow is unconditional (cond_dim=0) but a condition was given")
            return z, None
        if cond is None:
            raise ValueError(f"this flow needs a condition of shape (batch, {self.cond_dim})")
        if cond.dim() == 1:
            cond = cond.unsqueeze(0)
        if cond.dim() != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"expected cond of shape (batch, {self.cond_dim}), got {tuple(cond.shape)}")
        if cond.shape[0] == 1 and z.shape[0] != 1:
            cond = cond.expand(z.shape[0], -1)
        elif cond.shape[0] != z.shape[0]:
            raise ValueError(f"cond has batch {cond.shape[0]} but z has batch {z.shape[0]}")
        return z, cond.to(dtype)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Anonymize: ``(z_anon, logdet)`` with ``logdet`` of shape (B,)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z, cond = self._prepare(z, cond)
            return self._forward(z, cond)

    def inverse(self, z_anon: Tensor, cond: Tensor | None = None) -> Tensor:
        """Recover: the exact inverse of ``forward`` under the same condition."""
        with torch.autocast(device_type=z_anon.device.type, enabled=False):
            z_anon, cond = self._prepare(z_anon, cond)
            return self._inverse(z_anon, cond)

    def log_prob(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """Density of ``z`` under the flow with a standard normal base: log N(F(z, c)) + log|det J|."""
        u, logdet = self.forward(z, cond)
        return -0.5 * (u.pow(2).sum(dim=1) + self.dim * math.log(2 * math.pi)) + logdet


class SequentialFlow(KeyedFlow):
    """A flow that is a plain chain of :class:`FlowLayer` s (what most built-ins are).

    ``layer_list_name`` is the attribute (hence the state-dict prefix) the chain lives under; a flow that
    must load a foreign layout by name (FrEIA's ``module_list``) sets it."""

    layer_list_name = "layers"

    def __init__(self, dim: int, cond_dim: int, num_blocks: int, layers: Iterable[FlowLayer]) -> None:
        super().__init__(dim, cond_dim, num_blocks)
        setattr(self, self.layer_list_name, nn.ModuleList(layers))

    @property
    def chain(self) -> nn.ModuleList:
        return getattr(self, self.layer_list_name)

    def _forward(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for layer in self.chain:
            z, ld = layer(z, cond)
            logdet = logdet + ld
        return z, logdet

    def _inverse(self, z: Tensor, cond: Tensor | None) -> Tensor:
        for layer in reversed(self.chain):
            z = layer.inverse(z, cond)
        return z
