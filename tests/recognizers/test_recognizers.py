"""Recognizers: the verification rules, threshold calibration, the built-ins (registered, loading ifadit's own
checkpoints, clear errors for missing weights) and command-line specs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ifadit import registry
from ifadit.lightning_cli import cli_main
from ifadit.recognizers import (
    EncoderRecognizer,
    InputConvention,
    Recognition,
    Recognizer,
    Verification,
    as_verification,
    build_recognizer,
    calibrate_threshold,
    parse_recognizer_spec,
    recognizer_label,
)
from ifadit.recognizers.builtin import ARCFACE_COSINE_THRESHOLD, SynthFacesRecognizer
from ifadit.testing import RECOGNIZER_CHECKS, RecognizerContract, check_recognizer
from ifadit.weights import WeightsError

CONF = Path(__file__).resolve().parents[1] / "conf"


class PixelRecognizer(Recognizer):
    """The pixels of a (B, 3, 1, 1) image are its embedding: every score below is computable by hand."""

    embedding_dim = 3
    convention = InputConvention(size=1, aligned=True, differentiable=True)

    def recognize(self, images: Tensor) -> Recognition:
        return Recognition(images.flatten(1), torch.ones(images.shape[0], dtype=torch.bool))


def test_cosine_and_euclidean_rules() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    cosine = Verification(0.8)
    torch.testing.assert_close(cosine.score(a, b), torch.tensor([1 / math.sqrt(2), 1.0], dtype=torch.float64))
    assert cosine.same(a, b).tolist() == [False, True]
    euclidean = Verification(1.0, "euclidean")
    torch.testing.assert_close(euclidean.score(a, b), torch.tensor([-1.0, -1.0], dtype=torch.float64))
    assert euclidean.same(a, b).tolist() == [True, True]
    assert Verification(0.99, "euclidean").same(a, b).tolist() == [False, False]
    torch.testing.assert_close(euclidean.score_matrix(a, b), -torch.cdist(a, b).double())
    assert as_verification(0.3) == Verification(0.3)
    assert cosine.describe() == "cos >= 0.8" and euclidean.describe() == "L2 <= 1"
    with pytest.raises(ValueError, match="measure must be"):
        Verification(0.5, "manhattan")


def test_recognition_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"expected embeddings \(B, D\) and found \(B,\)"):
        Recognition(torch.zeros(2, 3), torch.ones(3, dtype=torch.bool))


def test_calibration_reaches_the_false_acceptance_rate_asked_for() -> None:
    # identity 0: v0, v1; identity 1: v2, v3. Genuine cosines 0.8 and 0.8; impostor 0.6, 0.48, 0, 0.
    vectors = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.0, 0.8], [0.0, 0.0, 1.0]])
    batch = {"image": vectors.view(4, 3, 1, 1), "identity": torch.tensor([0, 0, 1, 1])}
    recognizer = PixelRecognizer()
    calibration = calibrate_threshold(recognizer, [batch], far=0.25)
    # FAR 0.25 of four impostor pairs allows one (the 0.6 pair): the threshold lies just above 0.48
    assert calibration.threshold > 0.48 and calibration.threshold == pytest.approx(0.48)
    assert (calibration.far, calibration.tar) == (0.25, 1.0)
    assert (calibration.same_pairs, calibration.different_pairs) == (2, 4)
    assert recognizer.rule == Verification(calibration.threshold)
    strict = calibrate_threshold(PixelRecognizer(), [batch], far=0.2)  # allows none: just above 0.6
    assert strict.threshold == pytest.approx(0.6) and strict.far == 0.0 and strict.tar == 1.0
    euclidean = calibrate_threshold(PixelRecognizer(), [batch], far=0.25, measure="euclidean")
    # impostor distances sqrt(2 - 2 cos): 0.894, 1.020, 1.414, 1.414; one may pass: just below 1.020
    assert euclidean.threshold == pytest.approx(math.sqrt(2 - 2 * 0.48)) and euclidean.far == 0.25
    with pytest.raises(ValueError, match="at least two images of one identity"):
        calibrate_threshold(PixelRecognizer(), [{**batch, "identity": torch.arange(4)}])


def test_a_recognizer_without_threshold_says_how_to_get_one() -> None:
    with pytest.raises(ValueError, match="calibrate_threshold"):
        _ = PixelRecognizer().rule


def test_encoder_recognizer_finds_a_face_everywhere_and_never_trains() -> None:
    encoder = registry.create("identity_encoders", "timm", backbone="resnet10t", embedding_dim=16, in_size=32)
    judge = EncoderRecognizer(encoder, threshold=0.5, input_size=32)
    judge.train()
    assert not judge.training and not encoder.training
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    result = judge(images)
    assert result.found.tolist() == [True, True, True]
    torch.testing.assert_close(result.embeddings, encoder(images))
    assert judge.describe()["verification"] == "cos >= 0.5" and judge.convention.differentiable


def test_builtins_are_registered() -> None:
    infos = registry.available("recognizers")
    for name, cls in {
        "synthfaces": "SynthFacesRecognizer",
        "arcface_irse50": "ArcFaceRecognizer",
        "facenet_vggface2": "FaceNetVGGFace2Recognizer",
        "facenet_casia": "FaceNetCASIARecognizer",
    }.items():
        assert infos[name].distribution == "ifadit"
        assert infos[name].value == f"ifadit.recognizers.builtin:{cls}"


def test_pretrained_recognizers_name_their_missing_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("IFADIT_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match=r"model_ir_se50\.pth"):
        registry.create("recognizers", "arcface_irse50")
    with pytest.raises(WeightsError, match=r"20180402-114759-vggface2\.pt"):
        registry.create("recognizers", "facenet_vggface2")
    with pytest.warns(UserWarning, match="RANDOM"):
        facenet = registry.create("recognizers", "facenet_casia", allow_random_init=True, threshold=0.4)
    assert facenet.convention == InputConvention(size=160, aligned=True, differentiable=True)
    assert facenet.rule == Verification(0.4)
    assert pytest.approx(0.23) == ARCFACE_COSINE_THRESHOLD


@pytest.fixture(scope="module")
def recognizer_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A recognizer-phase task as the CLI builds it, saved the way Lightning saves it (``state_dict``)."""
    cli = cli_main(["--config", str(CONF / "recognizer.yaml"), "--trainer.logger", "false"], run=False)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"state_dict": cli.model.state_dict(), "ifadit_phase": "recognizer"}, path)
    return path, cli.model.identity_encoder.eval()


def test_synthfaces_recognizer_loads_a_task_checkpoint(recognizer_checkpoint) -> None:
    path, encoder = recognizer_checkpoint
    judge = SynthFacesRecognizer(path, config=CONF / "recognizer.yaml", threshold=0.7)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(judge(images).embeddings, encoder(images))
    assert judge.convention.size == 32 and judge.rule == Verification(0.7)
    # a flow-phase checkpoint keeps the identity encoder under model.identity_encoder.
    state = torch.load(path, weights_only=True)["state_dict"]
    flow_like = path.with_name("flow.ckpt")
    renamed = {"model.identity_encoder." + k[len("recognizer.") :]: v for k, v in state.items()}
    torch.save({"state_dict": renamed}, flow_like)
    spec = {"class_path": "timm", "init_args": {"backbone": "resnet10t", "embedding_dim": 64, "in_size": 32}}
    from_flow = SynthFacesRecognizer(flow_like, identity_encoder=spec)
    torch.testing.assert_close(from_flow(images).embeddings, encoder(images))
    assert from_flow.verification is None


def test_synthfaces_recognizer_errors(recognizer_checkpoint, tmp_path) -> None:
    path, _ = recognizer_checkpoint
    with pytest.raises(ValueError, match="exactly one of them"):
        SynthFacesRecognizer(path)
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {"model.flow.x": torch.zeros(1)}}, empty)
    with pytest.raises(WeightsError, match="has no identity encoder"):
        SynthFacesRecognizer(empty, config=CONF / "recognizer.yaml")
    wrong = {"class_path": "timm", "init_args": {"backbone": "resnet10t", "embedding_dim": 32, "in_size": 32}}
    with pytest.raises(WeightsError, match="has shape"):
        SynthFacesRecognizer(path, identity_encoder=wrong)
    with pytest.raises(ValueError, match=r"has no model\.identity_encoder"):
        SynthFacesRecognizer(path, config=_no_encoder(tmp_path))


def _no_encoder(tmp_path: Path) -> Path:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  phase: recognizer\n")
    return recipe


def test_specs_on_the_command_line(recognizer_checkpoint) -> None:
    path, encoder = recognizer_checkpoint
    assert parse_recognizer_spec("dlib") == ("dlib", {})
    assert parse_recognizer_spec("arcface_irse50:checkpoint=/w/a.pth,threshold=0.3") == (
        "arcface_irse50", {"checkpoint": "/w/a.pth", "threshold": 0.3}
    )
    assert parse_recognizer_spec("/a:b/last.ckpt:config=r.yaml") == ("/a:b/last.ckpt", {"config": "r.yaml"})
    with pytest.raises(ValueError, match="expected key=value"):
        parse_recognizer_spec("x:config=a,oops")
    judge = build_recognizer(f"{path}:config={CONF / 'recognizer.yaml'},threshold=0.25")
    assert isinstance(judge, SynthFacesRecognizer) and judge.rule == Verification(0.25)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(judge(images).embeddings, encoder(images))
    assert recognizer_label(f"{path}:config=x.yaml") == path.parent.name
    assert recognizer_label("outputs/judge.ckpt") == "judge"
    with pytest.raises(ValueError, match="needs the recipe it was trained with"):
        build_recognizer(str(path))
    with pytest.raises(registry.RegistryError, match="no recognizers component named 'nosuch'"):
        build_recognizer("nosuch")


def test_embeddings_are_unit_vectors_for_cosine_rules(recognizer_checkpoint) -> None:
    path, _ = recognizer_checkpoint
    judge = SynthFacesRecognizer(path, config=CONF / "recognizer.yaml")
    out = judge(torch.rand(3, 3, 32, 32) * 2 - 1).embeddings
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert F.cosine_similarity(out[:1], out[:1]).item() == pytest.approx(1.0)


def test_synthfaces_recognizer_keeps_the_contract(recognizer_checkpoint) -> None:
    path, _ = recognizer_checkpoint
    report = check_recognizer(SynthFacesRecognizer(path, config=CONF / "recognizer.yaml", threshold=0.5))
    assert report.passed == tuple(RECOGNIZER_CHECKS) and not report.skipped


def _pretrained_builtin(name: str) -> Recognizer:
    """The pretrained built-ins with random weights (no download, no weights needed): the contract is
    about shapes, rules and behaviour, not about the weights' quality."""
    with pytest.warns(UserWarning, match="(?i)random"):
        return registry.create("recognizers", name, allow_random_init=True, threshold=0.4)


@pytest.mark.parametrize("name", ["arcface_irse50", "facenet_vggface2", "facenet_casia"])
def test_pretrained_builtins_keep_the_contract(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("IFADIT_WEIGHTS", str(tmp_path))
    judge = _pretrained_builtin(name)
    report = check_recognizer(judge, contract=RecognizerContract(batch=2))
    assert report.passed == tuple(RECOGNIZER_CHECKS) and not report.skipped


def test_an_encoder_recognizer_without_threshold_keeps_the_contract() -> None:
    encoder = registry.create("identity_encoders", "timm", backbone="resnet10t", embedding_dim=16, in_size=32)
    report = check_recognizer(EncoderRecognizer(encoder, input_size=32))
    assert "verification" in report.skipped and "declarations" in report.passed


class _BatchDependentRecognizer(PixelRecognizer):
    """A broken judge: it centres embeddings on the batch mean, so a face's score depends on its company."""

    def recognize(self, images: Tensor) -> Recognition:
        flat = images.flatten(1)
        return Recognition(flat - flat.mean(dim=0), torch.ones(images.shape[0], dtype=torch.bool))


def test_the_contract_catches_a_batch_dependent_judge() -> None:
    report = check_recognizer(PixelRecognizer(), include=("declarations", "embeddings", "deterministic"))
    assert report.passed == ("declarations", "embeddings", "deterministic")
    with pytest.raises(AssertionError, match="_BatchDependentRecognizer: image 0 alone embeds"):
        check_recognizer(_BatchDependentRecognizer(), include=("deterministic",))
