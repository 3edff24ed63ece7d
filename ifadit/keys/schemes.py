"""Key schemes: a secret -> the flow's condition vector.

Expansion of a secret into numbers goes through SHAKE-256 (``SecretKey.expand``) with a per-scheme context,
never through torch's or numpy's RNG, whose streams may change between versions and devices: the same
key has to give the same condition on every machine, for as long as a released image may need recovery.
Training draws fresh random secrets per sample through exactly the same expansion path.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ifadit.keys.secret import SecretKey

SecretLike = SecretKey | Sequence[SecretKey]


class KeyScheme(nn.Module, ABC):
    """Turns secrets into condition vectors of size ``dim`` (the flows' ``cond_dim``)."""

    #: bytes-to-number construction version; bump it (and keep the old one) if the expansion ever changes
    expansion_version = 1

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"key dimension must be >= 1, got {dim}")
        self.dim = dim

    @abstractmethod
    def expand(self, secret: SecretKey) -> np.ndarray:
        """The raw, deterministic vector of one secret (float32, shape (dim,))."""

    def embed(self, raw: Tensor) -> Tensor:
        """Raw key vectors -> conditions (identity unless a scheme maps them further)."""
        return raw

    def _device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def raw(
        self, secret: SecretLike, batch_size: int | None = None, device: torch.device | None = None
    ) -> Tensor:
        secrets = [secret] if isinstance(secret, SecretKey) else list(secret)
        if not secrets or not all(isinstance(s, SecretKey) for s in secrets):
            raise TypeError("expected a SecretKey or a non-empty sequence of SecretKeys")
        raw = torch.from_numpy(np.stack([self.expand(s) for s in secrets]))
        if batch_size is not None:
            if len(secrets) == 1:
                raw = raw.expand(batch_size, -1)
            elif len(secrets) != batch_size:
                raise ValueError(f"got {len(secrets)} secrets for a batch of {batch_size}")
        return raw.to(device or self._device())

    def forward(
        self, secret: SecretLike, batch_size: int | None = None, device: torch.device | None = None
    ) -> Tensor:
        """Condition vectors (B, dim): one secret broadcast over ``batch_size``, or one secret per sample."""
        return self.embed(self.raw(secret, batch_size, device))

    def sample(self, batch_size: int, device: torch.device | None = None) -> Tensor:
        """Conditions of fresh random secrets, one per sample (training and key-diversity metrics).

        These keys are never anyone's secret, so they come from torch's generator rather than the OS:
        a seeded run (``seed_everything``) then trains on the same keys every time and repeats."""
        raw = torch.randint(0, 256, (batch_size, 32), dtype=torch.uint8)
        return self([SecretKey(bytes(row.tolist())) for row in raw], device=device)


def _uint32_words(secret: SecretKey, context: bytes, count: int) -> np.ndarray:
    return np.frombuffer(secret.expand(context, 4 * count), dtype=">u4").astype(np.uint32)


class MappingKeyScheme(KeyScheme):
    """The paper's key: a vector in [0.5, 1) passed through a mapping network.

    By default an own MLP is used (PixelNorm, then ``num_layers`` Linear layers with LeakyReLU(0.2) between).
    Because every raw key lies in the positive orthant, where two keys have cosine ≈ 0.96, the own MLP first
    standardises the raw vector (U[0.5, 1) has mean 0.75, std 1/sqrt(48)); a generator's pretrained mapping
    network (``attach_mapping(generator.map)``) gets the raw vector exactly as the official code feeds it.
    """

    def __init__(
        self,
        dim: int = 512,
        num_layers: int = 4,
        trainable: bool = False,
        standardize: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(dim)
        self.standardize = standardize
        layers: list[nn.Module] = []
        generator = torch.Generator().manual_seed(seed)  # the frozen MLP is reproducible from the recipe
        # A random deep LeakyReLU net pulls all inputs together (its outputs share a positive mean, so two
        # keys' conditions drift to cosine ~0.4 after 4 layers). Each bias cancels the mean its input
        # activation carries, E[lrelu(h)] = 0.8 sigma / sqrt(2 pi) with sigma ~ 1 by the He-style init,
        # which keeps the keys' conditions nearly orthogonal at any depth.
        activation_mean = 0.0
        for _ in range(num_layers):
            linear = nn.Linear(dim, dim)
            with torch.no_grad():
                linear.weight.normal_(
                    0.0, math.sqrt(2.0 / (1 + 0.2**2)) / math.sqrt(dim), generator=generator
                )
                linear.bias.copy_(-activation_mean * linear.weight.sum(dim=1))
            layers += [linear, nn.LeakyReLU(0.2)]
            activation_mean = 0.8 / math.sqrt(2 * math.pi)
        # No activation after the last layer: centred conditions keep keys apart (cosine ~0 between keys).
        self.mlp = nn.Sequential(*layers[:-1])
        self.mlp.requires_grad_(trainable)
        self._external_mapping: Callable[[Tensor], Tensor] | None = None

    def attach_mapping(self, mapping: Callable[[Tensor], Tensor] | None) -> None:
        """Use a generator's mapping network (e.g. ``StyleGAN2Generator.map``) instead of the own MLP.

        Stored as a plain callable, not a submodule, so the generator's weights are not saved twice."""
        object.__setattr__(self, "_external_mapping", mapping)

    def expand(self, secret: SecretKey) -> np.ndarray:
        # Top 23 bits of each word: 0.5 + k / 2**24 is exact in float32 and strictly below 1.
        words = _uint32_words(secret, b"mapping", self.dim) >> np.uint32(9)
        return (0.5 + words.astype(np.float64) / 2.0**24).astype(np.float32)

    def embed(self, raw: Tensor) -> Tensor:
        if self._external_mapping is not None:
            return self._external_mapping(raw)
        x = (raw - 0.75) * math.sqrt(48.0) if self.standardize else raw
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)  # PixelNorm
        return self.mlp(x)


class BitsKeyScheme(KeyScheme):
    """PRO-Face S style key: ``dim`` ±1 bits expanded from the secret, fed to the flow as they are."""

    def expand(self, secret: SecretKey) -> np.ndarray:
        raw = np.frombuffer(secret.expand(b"bits", (self.dim + 7) // 8), dtype=np.uint8)
        bits = np.unpackbits(raw)[: self.dim]
        return bits.astype(np.float32) * 2.0 - 1.0
