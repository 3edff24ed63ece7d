"""The composed iFADIT model as a plain ``nn.Module``: anonymize and recover faces with a key condition.

::

    anonymize(x, c):  z = E_id(x); a = E_attr(x); z_anon = F(z, c); x_anon = G(M(z_anon, a))
    recover(x', c):   z' = C(E_id(x')); z_rec = F^-1(z', c); x_rec = G(M(z_rec, E_attr(x')))

The flow is exact in the identity space only; recovery from an image goes through the identity encoder
and the compensator ``C`` (identity when absent: the paper's "w/o MLP" ablation). The Lightning task and
the photo pipeline both drive this module; it never imports either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ifadit.flows import KeyedFlow
from ifadit.keys import KeyScheme
from ifadit.nets import AttributeEncoder, Generator, IdentityEncoder
from ifadit.nets.image import as_stored


@dataclass
class Anonymized:
    image: Tensor  # x_anon, [-1, 1]
    identity: Tensor  # z, the source identity
    attributes: Tensor  # a
    anonymized_identity: Tensor  # z_anon = F(z, c)


@dataclass
class Recovered:
    image: Tensor  # x_rec
    identity: Tensor  # z_rec = F^-1(C(E_id(x_anon)), c)
    flow_input: Tensor  # C(E_id(x_anon)), the compensator's estimate of z_anon


class IFADIT(nn.Module):
    """Identity encoder, attribute encoder, mapper, generator, flow, key scheme and compensator."""

    def __init__(
        self,
        identity_encoder: IdentityEncoder,
        attribute_encoder: AttributeEncoder,
        mapper: nn.Module,
        generator: Generator,
        flow: KeyedFlow | None = None,
        key_scheme: KeyScheme | None = None,
        compensator: nn.Module | None = None,
    ) -> None:
        """``flow`` and ``key_scheme`` may be absent while only reconstruction is trained (phase 1)."""
        super().__init__()
        if (flow is None) != (key_scheme is None):
            raise ValueError("give both a flow and a key scheme, or neither")
        if flow is not None and key_scheme is not None:
            self._check_sizes(identity_encoder, flow, key_scheme)
        self.identity_encoder = identity_encoder
        self.attribute_encoder = attribute_encoder
        self.mapper = mapper
        self.generator = generator
        self.flow = flow
        self.key_scheme = key_scheme
        self.compensator = compensator

    @staticmethod
    def _check_sizes(identity_encoder: IdentityEncoder, flow: KeyedFlow, key_scheme: KeyScheme) -> None:
        if flow.dim != identity_encoder.embedding_dim:
            raise ValueError(
                f"the flow works on {flow.dim}-d identities but the identity encoder gives "
                f"{identity_encoder.embedding_dim}-d ones"
            )
        if flow.cond_dim != key_scheme.dim:
            raise ValueError(
                f"the flow's cond_dim ({flow.cond_dim}) differs from the key scheme's dim ({key_scheme.dim})"
            )

    @property
    def keyed(self) -> bool:
        return self.flow is not None

    def _flow(self) -> KeyedFlow:
        if self.flow is None:
            raise RuntimeError("this model has no flow yet (a phase-1 model): train or load phase 2 first")
        return self.flow

    def render(self, identity: Tensor, attributes: Tensor) -> Tensor:
        return self.generator(self.mapper(identity, attributes))

    def reconstruct(self, images: Tensor) -> Tensor:
        """G(M(E_id(x), E_attr(x))): what phase 1 trains to equal ``x``."""
        return self.render(self.identity_encoder(images), self.attribute_encoder(images))

    def anonymize(self, images: Tensor, cond: Tensor) -> Anonymized:
        identity = self.identity_encoder(images)
        attributes = self.attribute_encoder(images)
        anonymized_identity, _ = self._flow()(identity, cond)
        return Anonymized(
            self.render(anonymized_identity, attributes), identity, attributes, anonymized_identity
        )

    def flow_input_from_image(self, images: Tensor) -> Tensor:
        """C(E_id(x_anon)): the estimate of the flow output that produced an anonymized image."""
        embedding = self.identity_encoder(images)
        return embedding if self.compensator is None else self.compensator(embedding)

    def recover(self, anonymized_images: Tensor, cond: Tensor, attributes: Tensor | None = None) -> Recovered:
        flow_input = self.flow_input_from_image(anonymized_images)
        identity = self._flow().inverse(flow_input, cond)
        if attributes is None:
            attributes = self.attribute_encoder(anonymized_images)
        return Recovered(self.render(identity, attributes), identity, flow_input)

    @torch.no_grad()
    def anonymize_and_recover(self, images: Tensor, cond: Tensor) -> tuple[Anonymized, Recovered]:
        """The round trip a user makes: recovery reads the anonymized image as its 8-bit file stores it."""
        anonymized = self.anonymize(images, cond)
        return anonymized, self.recover(as_stored(anonymized.image), cond)
