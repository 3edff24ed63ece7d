"""Assembling a phase's model from its components, with one-line errors for what a phase lacks."""

from __future__ import annotations

from torch import nn

from ifadit.anonymizer import IFADIT
from ifadit.flows import KeyedFlow
from ifadit.keys import KeyScheme
from ifadit.nets import AttributeEncoder, Generator, IdentityEncoder


def build_model(
    phase: str,
    identity_encoder: IdentityEncoder,
    attribute_encoder: AttributeEncoder | None,
    mapper: nn.Module | None,
    generator: Generator | None,
    flow: KeyedFlow | None,
    key_scheme: KeyScheme | None,
    compensator: nn.Module | None,
    key_mapping_from_generator: bool = False,
) -> IFADIT:
    """The :class:`IFADIT` of phase 1 (no flow) or of a keyed phase."""
    keyed = phase != "disentangle"
    needed = {"attribute_encoder": attribute_encoder, "mapper": mapper, "generator": generator}
    if keyed:
        needed.update(flow=flow, key_scheme=key_scheme)
    if phase == "compensator":
        needed.update(compensator=compensator)
    missing = [name for name, part in needed.items() if part is None]
    if missing:
        raise ValueError(f"phase {phase!r} needs the components: {', '.join(missing)}")
    if keyed and key_mapping_from_generator:
        # The paper's key mapper: the (frozen, pretrained) StyleGAN2 mapping network.
        if not hasattr(key_scheme, "attach_mapping"):
            raise ValueError(f"{type(key_scheme).__name__} cannot use a generator's mapping network")
        key_scheme.attach_mapping(generator.map)
    flow, key_scheme = (flow, key_scheme) if keyed else (None, None)
    return IFADIT(identity_encoder, attribute_encoder, mapper, generator, flow, key_scheme, compensator)
