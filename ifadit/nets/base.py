"""Base classes the task and recipes type components by, so YAML can swap any of them.

Image convention everywhere: float tensors in [-1, 1], NCHW, RGB. A network that wants another range
converts at its own edge, never the caller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class IdentityEncoder(nn.Module, ABC):
    """Face image -> identity embedding of ``embedding_dim``, L2-normalised."""

    embedding_dim: int = 512

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor: ...


class AttributeEncoder(nn.Module, ABC):
    """Face image -> per-style attribute codes of shape (B, n_styles, style_dim)."""

    n_styles: int
    style_dim: int = 512

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor: ...


class Generator(nn.Module, ABC):
    """W+ codes (B, n_latent, style_dim) -> images in [-1, 1] of ``size`` x ``size``."""

    size: int
    n_latent: int
    style_dim: int = 512

    @abstractmethod
    def forward(self, w_plus: Tensor) -> Tensor: ...

    @abstractmethod
    def map(self, z: Tensor) -> Tensor:
        """The mapping network z -> w (the paper's key mapper reuses it)."""


class Discriminator(nn.Module, ABC):
    """Images in [-1, 1] of ``size`` x ``size`` -> one realism logit each, shape (B, 1)."""

    size: int

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor: ...
