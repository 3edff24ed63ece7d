"""The compensator phase: after phase 2, the compensator alone is refitted on the finished flow, reading
stored anonymized renders back (in phase 2 it chases a moving flow and sees each face once)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ifadit.anonymizer import IFADIT
from ifadit.nets.image import as_stored
from ifadit.training.flow import KeySampler


class ReplayBuffer:
    """``(E_id(stored x_anon), z_anon)`` pairs under fresh keys, up to ``size``; each step fits ``C`` on
    ``batch`` pairs drawn from it, so each costly render serves many cheap steps. Everything but ``C`` is
    frozen, so the pairs stay valid. Not saved: a resumed fit refills it."""

    def __init__(self, size: int, batch: int) -> None:
        self.size = size
        self.batch = batch
        self.pairs: Tensor | None = None

    @property
    def full(self) -> bool:
        return self.pairs is not None and self.pairs.shape[0] >= self.size

    @torch.no_grad()
    def add(self, model: IFADIT, x: Tensor, keys: KeySampler) -> None:
        """This batch's faces under fresh keys, rendered and stored as an 8-bit file holds them."""
        assert model.flow is not None
        z_anon, _ = model.flow(model.identity_encoder(x), keys(x.shape[0]))
        stored = as_stored(model.render(z_anon, model.attribute_encoder(x)))
        pair = torch.cat((model.identity_encoder(stored), z_anon), dim=1)
        self.pairs = pair if self.pairs is None else torch.cat((self.pairs, pair))[: self.size]

    def loss(self, model: IFADIT, x: Tensor, keys: KeySampler) -> Tensor:
        """``|C(E_id(x_anon)) - z_anon|^2`` (summed over dimensions) on pairs drawn from the buffer, after
        adding this batch's while it is not full."""
        assert model.compensator is not None
        if not self.full:
            self.add(model, x, keys)
        assert self.pairs is not None
        drawn = self.pairs[torch.randint(0, self.pairs.shape[0], (self.batch,), device=self.pairs.device)]
        embedding, target = drawn.split(model.identity_encoder.embedding_dim, dim=1)
        return F.mse_loss(model.compensator(embedding), target) * target.shape[1]
