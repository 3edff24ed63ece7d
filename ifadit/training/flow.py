"""Phase 2: the keyed flow and the compensator (and a trainable key scheme) learn anonymity, diversity,
recovery and wrong-key losses; in the flow phase everything else is frozen, in the joint phase (the
single-phase ablation) the phase-1 parts learn on the same step."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from ifadit.anonymizer import IFADIT
from ifadit.keys import KeyScheme
from ifadit.training.adversarial import Adversary
from ifadit.training.losses import (
    Encoded,
    LossWeights,
    anonymity_loss,
    batch_diversity_loss,
    identity_loss,
)

KeySampler = Callable[[int], Tensor]  # batch size -> fresh random key conditions


def training_keys(scheme: KeyScheme, batch: int, device: torch.device, per_batch: bool) -> Tensor:
    """Fresh random key conditions for one step. ``per_batch`` (the official code's choice) gives the whole
    batch one key, so the batch-diversity terms compare different faces under the same key."""
    if per_batch:
        return scheme.sample(1, device=device).expand(batch, -1)
    return scheme.sample(batch, device=device)


@torch.no_grad()
def training_identities(model: IFADIT, batches: Iterable[dict[str, Tensor]], count: int) -> Tensor:
    """The identity vectors of the first ``count`` training faces, for a flow fitted before phase 2."""
    device = next(model.identity_encoder.parameters()).device
    identities: list[Tensor] = []
    seen = 0
    for batch in batches:
        identities.append(model.identity_encoder(batch["image"].to(device)).float())
        seen += identities[-1].shape[0]
        if seen >= count:
            break
    return torch.cat(identities)[:count]


def flow_terms(
    model: IFADIT,
    weights: LossWeights,
    x: Tensor,
    keys: KeySampler,
    encoded: Encoded | None = None,
    adversary: Adversary | None = None,
    frozen_front: bool = True,
) -> dict[str, Tensor]:
    """Phase-2 terms. ``encoded``: this batch's encodings and render from the phase-1 terms (joint phase):
    the same tensors this would compute again. ``frozen_front``: the encoders get no gradient (flow
    phase)."""
    m, w = model, weights
    assert m.flow is not None
    batch = x.shape[0]
    if encoded is not None:
        z, a = encoded.identity.detach(), encoded.attributes
    else:
        with torch.set_grad_enabled(not frozen_front and torch.is_grad_enabled()):
            z = m.identity_encoder(x).detach()
            a = m.attribute_encoder(x)
    if frozen_front:
        a = a.detach()
    cond_a = keys(batch)
    z_a, _ = m.flow(z, cond_a)
    x_a = m.render(z_a, a)
    f_a = m.identity_encoder(x_a)
    terms: dict[str, Tensor] = {}
    if w.anonymity:
        terms["anonymity"] = w.anonymity * anonymity_loss(f_a, z, w.margin)
    if w.anonymized_identity:
        terms["anonymized_identity"] = w.anonymized_identity * identity_loss(f_a, z_a, w.margin)
    if w.anonymized_adversarial and adversary is not None:
        terms["anonymized_adversarial"] = w.anonymized_adversarial * adversary.fool(x_a)
    if w.latent_norm:
        terms["latent_norm"] = w.latent_norm * (z_a.norm(dim=1) - 1).pow(2).mean()
    if w.two_key_diversity or w.latent_two_key:
        z_b, _ = m.flow(z, keys(batch))
        if w.two_key_diversity:
            f_b = m.identity_encoder(m.render(z_b, a))
            terms["two_key_diversity"] = w.two_key_diversity * anonymity_loss(f_a, f_b, w.margin)
        if w.latent_two_key:
            terms["latent_two_key"] = w.latent_two_key * anonymity_loss(z_a, z_b, w.margin)
    if w.latent_batch_diversity:
        # The batch's faces under one fresh key (one more flow pass; the training keys may differ per face).
        z_same, _ = m.flow(z, keys(1).expand(batch, -1))
        terms["latent_batch_diversity"] = w.latent_batch_diversity * batch_diversity_loss(
            z_same, w.diversity_threshold
        )
    if w.batch_diversity:
        terms["batch_diversity"] = w.batch_diversity * batch_diversity_loss(f_a, w.diversity_threshold)
    if w.image:
        if encoded is not None:
            x_hat = encoded.render.detach()
        else:
            with torch.no_grad():
                x_hat = m.render(z, a)
        terms["image"] = w.image * F.l1_loss(x_a, x_hat)
    if w.latent_recovery or w.recovery_identity or w.recovery_image or w.wrong_key:
        terms.update(_recovery_terms(m, w, x, z, z_a, x_a, f_a, cond_a, keys))
    return terms


def _recovery_terms(
    m: IFADIT,
    w: LossWeights,
    x: Tensor,
    z: Tensor,
    z_a: Tensor,
    x_a: Tensor,
    f_a: Tensor,
    cond_a: Tensor,
    keys: KeySampler,
) -> dict[str, Tensor]:
    """Recovery from the anonymized render: ``C(E_id(x_anon))`` back through the inverse flow, with the
    right key (recovered like ``x``) and with a fresh one (stays anonymous)."""
    assert m.flow is not None
    terms: dict[str, Tensor] = {}
    flow_input = f_a if m.compensator is None else m.compensator(f_a)
    if w.latent_recovery and m.compensator is not None:
        terms["latent_recovery"] = w.latent_recovery * F.mse_loss(flow_input, z_a.detach()) * z.shape[1]
    a_anon = m.attribute_encoder(x_a)
    if w.recovery_identity or w.recovery_image:
        x_rec = m.render(m.flow.inverse(flow_input, cond_a), a_anon)
        if w.recovery_identity:
            terms["recovery_identity"] = w.recovery_identity * identity_loss(
                m.identity_encoder(x_rec), z, w.margin
            )
        if w.recovery_image:
            terms["recovery_image"] = w.recovery_image * F.l1_loss(x_rec, x)
    if w.wrong_key:
        z_wrong = m.flow.inverse(flow_input, keys(z.shape[0]))
        f_wrong = m.identity_encoder(m.render(z_wrong, a_anon))
        terms["wrong_key"] = w.wrong_key * anonymity_loss(f_wrong, z, w.margin)
    return terms
