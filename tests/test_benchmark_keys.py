"""benchmarks/keys.py on a tiny random model: every number of its table is computed and in range; the
benchmarks' ``--judge NAME_OR_CKPT`` and the identity encoder they take from it."""

import argparse
import importlib
import sys
from pathlib import Path

import pytest
import torch

from ifadit import registry
from ifadit.anonymizer import IFADIT
from ifadit.keys import SecretKey
from ifadit.nets import IdentityEncoder
from ifadit.recognizers import Recognition, Recognizer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def benchmarks_path(monkeypatch: pytest.MonkeyPatch):
    """benchmarks/ importable for one test; its scripts forgotten afterwards (keys imports key_collisions)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield
    for module in ("keys", "key_collisions"):
        sys.modules.pop(module, None)


@pytest.fixture()
def keys_benchmark(benchmarks_path):
    return importlib.import_module("keys")


def test_the_keys_table_scores_every_key_and_every_ordered_pair(keys_benchmark) -> None:
    torch.manual_seed(0)
    create = registry.create
    model = IFADIT(
        create("identity_encoders", "timm", backbone="resnet10t", embedding_dim=32, in_size=32),
        create("attribute_encoders", "timm", backbone="resnet10t", n_styles=8, style_dim=32),
        create("mappers", "latent", id_dim=32, style_dim=32, n_styles=8, hidden=32),
        create("generators", "stylegan2", size=32, style_dim=32, n_mlp=2, max_channels=16),
        create("flows", "allinone", dim=32, cond_dim=32, num_blocks=2),
        create("key_schemes", "mapping", dim=32),
        create("mappers", "compensator", dim=32, hidden=[16]),
    ).eval()
    judge = create("identity_encoders", "timm", backbone="resnet10t", embedding_dim=16, in_size=32).eval()
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    keys = [SecretKey.generate() for _ in range(3)]
    result = keys_benchmark.measure(model, judge, x, keys, pair_faces=4)
    assert len(result["per_key"]) == 3 and len(result["wrong_key_pairs"]) == 6
    assert len(result["flow_output_pair_cos"]) == 3 and 0 <= result["collision_rate"] <= 1
    for row in result["per_key"]:
        assert set(row) == {"anonymized", "recovered", "recovery_psnr", "two_keys"}
        assert all(-1 <= row[k] <= 1 for k in ("anonymized", "recovered", "two_keys"))
    assert all(value > 0 for value in result["fid"].values())
    text = keys_benchmark.table(result, 6, 4, "test machine", "tiny")
    assert "| anonymized | <= 0.3 for every key |" in text and "of 6 |" in text and "FID" in text


@pytest.fixture()
def key_collisions(benchmarks_path):
    return importlib.import_module("key_collisions")


def test_the_benchmarks_judge_is_one_spec_defaulting_to_the_shipped_judge(key_collisions) -> None:
    parser = argparse.ArgumentParser()
    key_collisions.add_model_and_judge_arguments(parser)
    assert parser.parse_args([]).judge == "synthfaces64-judge"
    spec = "run/last.ckpt:config=recipe.yaml"
    assert parser.parse_args(["--judge", spec]).judge == spec
    with pytest.raises(SystemExit):
        parser.parse_args(["--judge_config", "recipe.yaml"])  # the old pair is gone


def test_the_judge_encoder_is_the_shipped_judges_identity_encoder(key_collisions) -> None:
    encoder = key_collisions.judge_encoder("synthfaces64-judge")
    assert isinstance(encoder, IdentityEncoder) and not encoder.training
    with torch.no_grad():
        assert encoder(torch.zeros(2, 3, 64, 64)).shape == (2, encoder.embedding_dim)


def test_a_judge_without_an_identity_encoder_is_refused_in_one_line(
    key_collisions, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Detecting(Recognizer):
        embedding_dim = 4

        def recognize(self, images: torch.Tensor) -> Recognition:
            return Recognition(torch.zeros(len(images), 4), torch.ones(len(images), dtype=torch.bool))

    monkeypatch.setattr(key_collisions, "build_recognizer", lambda spec: Detecting())
    with pytest.raises(SystemExit, match="not an EncoderRecognizer") as raised:
        key_collisions.judge_encoder("detecting")
    assert "\n" not in str(raised.value)


def test_known_pairs_give_away_a_whitened_rotation_key_from_rank_faces(benchmarks_path) -> None:
    """benchmarks/known_pairs.py's attack on the flow's whitened coordinates: exact readings of ``rank`` known
    faces under one key recover every other face of that key; fewer do not."""
    import torch.nn.functional as F

    from ifadit.flows.whitened import WhitenedRotationFlow

    known_pairs = importlib.import_module("known_pairs")
    sys.modules.pop("known_pairs", None)
    torch.manual_seed(0)
    flow = WhitenedRotationFlow(32, cond_dim=8, rank=6)
    flow.fit_identities(F.normalize(torch.randn(500, 32) * torch.logspace(0, -1, 32), dim=1))
    faces = F.normalize(torch.randn(40, 32), dim=1)
    with torch.no_grad():
        anonymized, _ = flow(faces, torch.randn(1, 8))
        recovered = known_pairs.whitened_attack(flow, anonymized, faces, n=6)
        guessed = known_pairs.whitened_attack(flow, anonymized, faces, n=3)
    torch.testing.assert_close(recovered, faces, atol=1e-4, rtol=0)
    assert (guessed - faces).abs().max() > 1e-2
