"""The whitened-rotation flow: what its fit promises (anonymized identities distributed like real ones,
every key a different identity) on identities with a known distribution. Its contract (exact inverse,
log-det, keys, checkpoints) runs with every flow's in test_flow_properties.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ifadit.flows.whitened import IDENTITIES_TO_FIT, WhitenedRotationFlow
from ifadit.keys import MappingKeyScheme

DIM, RANK = 64, 12


def _identities(count: int, generator: torch.Generator) -> torch.Tensor:
    """Unit vectors around a common mean, with most variance in a 12-d subspace of falling variances and
    a little everywhere else: the shape of a recognizer's embeddings."""
    basis = torch.linalg.qr(torch.randn(DIM, RANK, generator=torch.Generator().manual_seed(7))).Q
    spread = torch.linspace(1.0, 0.3, RANK)
    mean = F.normalize(torch.ones(DIM), dim=0) * 0.5
    coordinates = torch.randn(count, RANK, generator=generator) * spread
    noise = 0.02 * torch.randn(count, DIM, generator=generator)
    return F.normalize(mean + coordinates @ basis.T + noise, dim=1)


@pytest.fixture(scope="module")
def fitted() -> WhitenedRotationFlow:
    torch.manual_seed(0)
    flow = WhitenedRotationFlow(DIM, cond_dim=32, rank=RANK)
    assert flow.identities_to_fit == IDENTITIES_TO_FIT
    flow.fit_identities(_identities(IDENTITIES_TO_FIT, torch.Generator().manual_seed(1)))
    assert flow.identities_to_fit == 0
    return flow


def _key_conditions(count: int) -> torch.Tensor:
    torch.manual_seed(2)
    return MappingKeyScheme(dim=32).sample(count)


def test_anonymized_identities_are_distributed_like_real_ones(fitted: WhitenedRotationFlow) -> None:
    real = _identities(4000, torch.Generator().manual_seed(3))
    with torch.no_grad():
        anonymized, logdet = fitted(real, _key_conditions(1).expand(len(real), -1))
    assert torch.equal(logdet, torch.zeros(len(real)))
    covariance = torch.cov(real.T)
    assert (torch.cov(anonymized.T) - covariance).norm() <= 0.15 * covariance.norm()  # sampling: ~0.1
    spread = covariance.trace().sqrt()  # the typical distance of an identity from the mean
    assert (anonymized.mean(dim=0) - real.mean(dim=0)).norm() <= 0.1 * spread
    # under this one key each face moves to an unrelated identity: its whitened principal coordinates turn
    # to orthogonal ones, and the centred identities are uncorrelated
    whitened = [fitted.whitened(z) for z in (real, anonymized)]
    assert F.cosine_similarity(*whitened).abs().max() < 1e-4
    centred = real - fitted.mean, anonymized - fitted.mean
    assert F.cosine_similarity(*centred).mean().abs() < 0.1


def test_two_keys_give_two_identities_for_almost_every_pair(fitted: WhitenedRotationFlow) -> None:
    faces = _identities(16, torch.Generator().manual_seed(4))
    keys = _key_conditions(32)
    with torch.no_grad():
        outputs = torch.stack([fitted(faces, key.expand(len(faces), -1))[0] for key in keys])
        recovered = torch.stack(
            [fitted.inverse(out, key.expand(len(faces), -1)) for out, key in zip(outputs, keys, strict=True)]
        )
    torch.testing.assert_close(recovered, faces.expand(len(keys), -1, -1), atol=1e-5, rtol=0)
    centred = F.normalize(outputs - fitted.mean, dim=-1)  # (keys, faces, dim)
    pairs = torch.einsum("ifd,jfd->ijf", centred, centred).mean(dim=-1)
    off_diagonal = pairs[~torch.eye(len(keys), dtype=torch.bool)]
    assert (off_diagonal > 0.5).float().mean() <= 0.05
    assert off_diagonal.abs().median() < 0.3


def test_the_fit_travels_in_the_state_dict_and_a_loaded_flow_is_not_refitted(
    fitted: WhitenedRotationFlow,
) -> None:
    torch.manual_seed(5)
    loaded = WhitenedRotationFlow(DIM, cond_dim=32, rank=RANK)
    faces, key = _identities(8, torch.Generator().manual_seed(6)), _key_conditions(1)
    assert not torch.equal(loaded(faces, key)[0], fitted(faces, key)[0])
    loaded.load_state_dict(fitted.state_dict(), strict=True)
    assert loaded.identities_to_fit == 0
    assert torch.equal(loaded(faces, key)[0], fitted(faces, key)[0])


def test_a_fit_on_too_few_or_wrongly_shaped_identities_is_refused() -> None:
    flow = WhitenedRotationFlow(DIM, cond_dim=32, rank=RANK)
    for bad in (torch.randn(RANK, DIM), torch.randn(100, DIM + 1), torch.randn(DIM)):
        with pytest.raises(ValueError, match="fitting needs identities of shape"):
            flow.fit_identities(bad)
    assert flow.identities_to_fit == IDENTITIES_TO_FIT
    with pytest.raises(ValueError, match="rank must be even and >= 2"):
        WhitenedRotationFlow(DIM, cond_dim=32, rank=7)
