"""Weak-key rejection (``ifadit.keycheck``) on a small random model."""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from ifadit import registry
from ifadit.anonymizer import IFADIT
from ifadit.keycheck import check_key, choose_key
from ifadit.keys import SecretKey
from ifadit.nets.image import as_stored


@pytest.fixture(scope="module")
def model() -> IFADIT:
    torch.manual_seed(0)
    return IFADIT(
        registry.create("identity_encoders", "timm", backbone="resnet10t", embedding_dim=32, in_size=32),
        registry.create("attribute_encoders", "timm", backbone="resnet10t", n_styles=8, style_dim=32),
        registry.create("mappers", "latent", id_dim=32, style_dim=32, n_styles=8, hidden=32),
        registry.create("generators", "stylegan2", size=32, style_dim=32, n_mlp=2, max_channels=16),
        registry.create("flows", "allinone", dim=32, cond_dim=32, num_blocks=2),
        registry.create("key_schemes", "mapping", dim=32),
        registry.create("mappers", "compensator", dim=32, hidden=[16]),
    ).eval()


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _keys(count: int) -> list[SecretKey]:
    return [SecretKey(hashlib.sha256(f"keycheck-test/{i}".encode()).digest()) for i in range(count)]


def test_a_check_reads_the_anonymized_and_the_recovered_face_back_with_the_model_encoder(model, faces):
    secret = _keys(1)[0]
    check = check_key(model, faces, secret, batch_size=2)  # batches of 2, 2 and 1
    with torch.no_grad():
        cond = model.key_scheme(secret, batch_size=len(faces))
        z = model.identity_encoder(faces)
        anonymized = model.anonymize(faces, cond).image
        recovered = model.recover(as_stored(anonymized), cond).image  # from the 8-bit file, as a user would
        expected_anon = F.cosine_similarity(model.identity_encoder(anonymized), z).mean().item()
        expected_rec = F.cosine_similarity(model.identity_encoder(recovered), z).mean().item()
    assert check.anonymized == pytest.approx(expected_anon, abs=1e-5)
    assert check.recovered == pytest.approx(expected_rec, abs=1e-5)


def test_keys_are_drawn_until_enough_anonymize_and_the_best_recovering_of_those_is_kept(model, faces):
    keys = _keys(6)
    checks = [check_key(model, faces, k) for k in keys]
    threshold = sorted(c.anonymized for c in checks)[2]  # three of six pass
    passing = [i for i, c in enumerate(checks) if c.anonymized <= threshold]
    first_two = passing[:2]  # candidates=2: drawing stops at the second key that passes
    best = max(first_two, key=lambda i: checks[i].recovered)
    drawn = iter(keys)
    choice = choose_key(model, faces, candidates=2, max_anonymized=threshold, draw=lambda: next(drawn))
    assert choice.secret == keys[best] and choice.check == checks[best]
    assert len(choice.candidates) == first_two[1] + 1
    for i, check in enumerate(choice.candidates):  # weak keys are not recovered
        assert check.anonymized == pytest.approx(checks[i].anonymized, abs=1e-6)
        assert check.recovered == (checks[i].recovered if i in passing else None)
    # too few keys pass within max_draws: one line that names no key
    drawn = iter(keys)
    with pytest.raises(ValueError, match="only 3 of 6 drawn keys anonymize") as error:
        choose_key(model, faces, 4, threshold, draw=lambda: next(drawn), max_draws=6)
    assert "\n" not in str(error.value) and not any(k.fingerprint in str(error.value) for k in keys)


def test_bad_requests_are_refused(model, faces):
    with pytest.raises(ValueError, match="need 1 <= candidates <= max_draws"):
        choose_key(model, faces, candidates=0)
    with pytest.raises(ValueError, match="need 1 <= candidates <= max_draws"):
        choose_key(model, faces, candidates=5, max_draws=4)
    with pytest.raises(ValueError, match="a cosine in"):
        choose_key(model, faces, max_anonymized=2.0)
    with pytest.raises(ValueError, match="non-empty batch of images"):
        check_key(model, faces[:0], _keys(1)[0])
    phase_one = IFADIT(model.identity_encoder, model.attribute_encoder, model.mapper, model.generator)
    with pytest.raises(ValueError, match="needs a model with a trained flow"):
        check_key(phase_one, faces, _keys(1)[0])
