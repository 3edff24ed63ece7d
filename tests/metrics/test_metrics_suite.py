"""AnonymizationSuite on a tiny random model: every metric is fed what it should be (checked against direct
computations on the images the suite returns), "no face" verdicts are counted, two half-suites merge into
the whole, and ``ifadit score``'s headline numbers come out the same for the same judge and key."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ifadit import registry
from ifadit.anonymizer import IFADIT
from ifadit.evaluation import evaluate_headline
from ifadit.keys import SecretKey
from ifadit.metrics import AnonymizationSuite, MTCNNDetector, RecognizerFeatures, pixel_l1, public_key
from ifadit.nets.image import as_stored
from ifadit.recognizers import EncoderRecognizer, Recognition, Verification

DIM, SIZE = 32, 32


def _model() -> IFADIT:
    model = IFADIT(
        registry.create("identity_encoders", "timm", backbone="resnet10t", embedding_dim=DIM, in_size=SIZE),
        registry.create("attribute_encoders", "timm", backbone="resnet10t", n_styles=8, style_dim=DIM),
        registry.create("mappers", "latent", id_dim=DIM, style_dim=DIM, n_styles=8, hidden=DIM),
        registry.create("generators", "stylegan2", size=SIZE, style_dim=DIM, n_mlp=2, max_channels=16),
        registry.create("flows", "allinone", dim=DIM, cond_dim=DIM, num_blocks=2),
        registry.create("key_schemes", "mapping", dim=DIM),
        registry.create("mappers", "compensator", dim=DIM, hidden=[64]),
    )
    return model.eval()


def _judge(threshold: float = 0.5) -> EncoderRecognizer:
    encoder = registry.create(
        "identity_encoders", "timm", backbone="resnet10t", embedding_dim=16, in_size=SIZE
    )
    return EncoderRecognizer(encoder, threshold=threshold, input_size=SIZE)


class BrightFaces(EncoderRecognizer):
    """A judge that sees a face only in images brighter than ``level`` (a stand-in detector with a rule
    the test can apply itself)."""

    def __init__(self, encoder: torch.nn.Module, level: float) -> None:
        super().__init__(encoder, threshold=0.5)
        self.level = level

    def recognize(self, images: Tensor) -> Recognition:
        found = images.mean(dim=(1, 2, 3)) > self.level
        embeddings = self.encoder(images) * found[:, None]
        return Recognition(embeddings, found)


@pytest.fixture(scope="module")
def setup() -> dict:
    torch.manual_seed(0)
    model, judge = _model(), _judge()
    images = torch.rand(12, 3, SIZE, SIZE) * 2 - 1
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    secret = SecretKey.generate()
    return {"model": model, "judge": judge, "images": images, "labels": labels, "secret": secret}


def test_every_metric_is_fed_what_it_should_be(setup) -> None:
    model, judge, x, labels, secret = (setup[k] for k in ("model", "judge", "images", "labels", "secret"))
    level = x.mean(dim=(1, 2, 3)).median().item()
    bright = BrightFaces(judge.encoder, level)
    suite = AnonymizationSuite({"judge": judge, "bright": bright}, num_anonymizations=3)
    out = [suite.update(model, x[:6], secret, labels[:6]), suite.update(model, x[6:], secret, labels[6:])]
    r = suite.compute()

    def cat(key: str) -> Tensor:
        return torch.cat([o[key] for o in out])

    anon, rec, wrong, bit = cat("anonymized"), cat("recovered"), cat("wrong_key"), cat("one_bit_key")
    assert anon.shape == (12, 3, 3, SIZE, SIZE)
    with torch.no_grad():
        e = {name: judge(img).embeddings for name, img in
             (("x", x), ("anon", anon[:, 0]), ("rec", rec), ("wrong", wrong), ("bit", bit))}
    for key, probe in (("anonymity", "anon"), ("reversibility", "rec"), ("security/wrong_key", "wrong"),
                       ("security/one_bit_key", "bit")):
        expected = F.cosine_similarity(e["x"], e[probe]).mean().item()
        assert r[f"{key}/judge/cos"] == pytest.approx(expected, abs=1e-5), key
        assert r[f"{key}/judge/pairs"] == 12
    assert r["reversibility/psnr"] == pytest.approx(_psnr(rec, x).mean().item(), abs=1e-3)
    assert r["security/no_key/psnr"] == pytest.approx(_psnr(anon[:, 0], x).mean().item(), abs=1e-3)
    pixel = [pixel_l1(anon[:, i], anon[:, j]).mean().item() for i, j in ((0, 1), (0, 2), (1, 2))]
    assert r["diversity/pixel"] == pytest.approx(sum(pixel) / 3, abs=1e-6)
    assert r["reversibility/latent/max_abs"] < 1e-5
    assert 0.0 <= r["anonymity/judge/retrieval/top1"] <= 1.0 and r["anonymity/judge/retrieval/gallery"] == 12
    assert r["anonymity/judge/retrieval/chance"] == pytest.approx(0.25)
    for name in ("security/key_auc_density/auc", "security/key_auc_sphere/auc"):
        assert 0.0 <= r[name] <= 1.0
    # "no face": references at or below the median brightness (6 of 12), probes by the same rule
    assert r["anonymity/bright/no_face_reference"] == 6
    assert r["anonymity/bright/no_face_probe"] == int((anon[:, 0].mean(dim=(1, 2, 3)) <= level).sum())
    assert r["diversity/bright/no_face"] == int((anon.mean(dim=(2, 3, 4)) <= level).sum())
    # not configured: n/a
    assert r["quality/fid"] is None and r["reversibility/lpips"] is None and r["diversity/lpips"] is None
    assert "utility/detection_rate" not in r
    # the wrong key differs per image and from the user's; the one-bit key is one flip away
    assert not torch.allclose(rec, wrong) and not torch.allclose(rec, bit)


def test_recovery_reads_the_anonymized_face_as_its_8_bit_file_holds_it(setup) -> None:
    model, judge, x, secret = (setup[k] for k in ("model", "judge", "images", "secret"))
    out = AnonymizationSuite({"judge": judge}, num_anonymizations=2).update(model, x, secret)
    anon = out["anonymized"]
    torch.testing.assert_close(anon, as_stored(anon))  # every anonymized face is stored
    cond = model.key_scheme(secret, batch_size=len(x))
    with torch.no_grad():
        from_file = model.recover(anon[:, 0], cond).image
        from_floats = model.recover(model.anonymize(x, cond).image, cond).image
    torch.testing.assert_close(out["recovered"], from_file)
    assert not torch.allclose(out["recovered"], from_floats)  # the rounding reaches the recovery
    _, recovered = model.anonymize_and_recover(x, cond)  # the grids' round trip reads the file too
    torch.testing.assert_close(recovered.image, from_file)


def test_ifadit_score_headline_is_the_suite_seen_through_one_judge(setup) -> None:
    model, judge, x, secret = (setup[k] for k in ("model", "judge", "images", "secret"))
    scores = evaluate_headline(model, judge.encoder, [{"image": x[:6]}, {"image": x[6:]}], secret)
    with torch.no_grad():
        cond = model.key_scheme(secret, batch_size=12)
        anonymized, recovered = model.anonymize_and_recover(x, cond)
        stored = as_stored(anonymized.image)  # what the suite judges and recovers from
        images = {"x": x, "anon": stored, "rec": recovered.image, "recon": model.reconstruct(x)}
        e = {name: judge.encoder(img) for name, img in images.items()}
    for value, probe in (
        (scores.judge_cos_original_anonymized, "anon"),
        (scores.judge_cos_original_recovered, "rec"),
        (scores.judge_cos_original_reconstruction, "recon"),
    ):
        assert value == pytest.approx(F.cosine_similarity(e["x"], e[probe]).mean().item(), abs=1e-4), probe
    assert scores.recovery_psnr_db == pytest.approx(_psnr(recovered.image, x).mean().item(), abs=1e-3)
    assert scores.anonymized_psnr_db == pytest.approx(_psnr(stored, x).mean().item(), abs=1e-3)
    assert scores.images == 12 and scores.key_fingerprint == secret.fingerprint
    for value in (scores.judge_cos_original_wrong_key, scores.judge_cos_between_two_keys):
        assert -1.0 <= value <= 1.0
    assert scores.latent_roundtrip_max_error < 1e-5


def test_two_half_suites_merge_into_the_whole(setup) -> None:
    model, judge, x, labels, secret = (setup[k] for k in ("model", "judge", "images", "labels", "secret"))

    def suite() -> AnonymizationSuite:
        return AnonymizationSuite({"judge": judge}, num_anonymizations=2,
                                  fid_features=RecognizerFeatures(judge), perceptual=pixel_l1)

    whole, first, second = suite(), suite(), suite()
    whole.update(model, x, secret, labels)
    first.update(model, x[:5], secret, labels[:5])
    second.update(model, x[5:], secret, labels[5:], start=5)  # image 5 is image 5 of the whole
    merged = suite()
    merged.merge_state(first)
    merged.merge_state(second)
    expected, got = whole.compute(), merged.compute()
    assert set(got) == set(expected)
    for key, value in expected.items():
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert expected["reversibility/lpips"] is not None and expected["quality/fid"] is not None


def test_utility_with_mtcnn_and_configuration_errors(setup) -> None:
    model, judge, x, secret = (setup[k] for k in ("model", "judge", "images", "secret"))
    suite = AnonymizationSuite(judge, num_anonymizations=1, detector=MTCNNDetector())
    suite.update(model, x[:2], secret)
    r = suite.compute()
    for name in ("detection_rate", "reference_detection_rate"):
        assert 0.0 <= r[f"utility/{name}"] <= 1.0
    assert "diversity/judge/cos" not in r  # K = 1: no diversity
    with pytest.raises(ValueError, match="no verification threshold"):
        AnonymizationSuite(EncoderRecognizer(judge.encoder))
    with pytest.raises(ValueError, match=r"without '\.' or '/'"):
        AnonymizationSuite({"a/b": judge})
    phase_one = IFADIT(model.identity_encoder, model.attribute_encoder, model.mapper, model.generator)
    with pytest.raises(ValueError, match="needs a keyed model"):
        suite.update(phase_one, x[:2], secret)


def test_public_keys_are_fixed_and_not_the_users() -> None:
    assert public_key("wrong/0") == public_key("wrong/0") != public_key("wrong/1")
    assert public_key("wrong/0").fingerprint != SecretKey.generate().fingerprint
    assert Verification(0.5) == AnonymizationSuite(_judge()).recognizers["judge"].rule
    assert not math.isnan(0.0)


def test_fid_on_a_judges_embeddings_reuses_them_and_equals_a_second_pass(setup) -> None:
    model, judge, x, secret = (setup[k] for k in ("model", "judge", "images", "secret"))
    reused = AnonymizationSuite({"judge": judge}, fid_features=RecognizerFeatures(judge))
    outside = RecognizerFeatures(EncoderRecognizer(judge.encoder, threshold=0.5))  # not a judge: own pass
    separate = AnonymizationSuite({"judge": judge}, fid_features=outside)
    for suite in (reused, separate):
        suite.update(model, x, secret)
    assert reused.compute()["quality/fid"] == pytest.approx(separate.compute()["quality/fid"], rel=1e-5)


def _psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB of [-1, 1] images, by hand: -10 log10 of the mean squared error on [0, 1]."""
    return -10 * torch.log10(((a - b) / 2).pow(2).flatten(1).mean(dim=1))
