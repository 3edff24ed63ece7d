"""dlib judges real photos: a face is re-identified against a mirrored or shifted copy of itself, two people
are told apart, and a photo without a face gives "no face" (found False), never an exception."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from matplotlib import cbook
from PIL import Image

from ifadit import registry
from ifadit.metrics import IdentitySimilarity
from ifadit.recognizers import Recognizer
from ifadit.testing import RECOGNIZER_CHECKS, check_recognizer


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) in [-1, 1], ifadit's image convention."""
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def _hopper() -> np.ndarray:
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return np.asarray(Image.open(handle).convert("RGB"))


@pytest.fixture(scope="module")
def judge() -> Recognizer:
    return registry.create("recognizers", "dlib")


@pytest.fixture(scope="module")
def photos() -> dict[str, torch.Tensor]:
    astronaut, hopper = skimage.data.astronaut(), _hopper()
    return {
        "astronaut": _tensor(astronaut),
        "astronaut_mirrored": _tensor(astronaut[:, ::-1]),
        "astronaut_shifted": _tensor(np.roll(astronaut, (9, -12), axis=(0, 1))),
        "hopper": _tensor(hopper),
        "hopper_mirrored": _tensor(hopper[:, ::-1]),
        "hopper_shifted": _tensor(np.roll(hopper, (-10, 8), axis=(0, 1))),
    }


def test_declares_its_convention_and_dlib_rule(judge: Recognizer) -> None:
    assert judge.embedding_dim == 128
    assert judge.convention.aligned is False and judge.convention.differentiable is False
    assert judge.rule.measure == "euclidean" and judge.rule.threshold == pytest.approx(0.6)


@pytest.fixture(scope="module")
def embedded(judge, photos) -> dict[str, object]:
    return {name: judge(image) for name, image in photos.items()}


def test_a_photo_and_its_mirrored_or_shifted_copy_are_one_person(judge, embedded) -> None:
    assert all(bool(r.found.all()) for r in embedded.values())
    for person in ("astronaut", "hopper"):
        reference = embedded[person].embeddings
        for variant in ("mirrored", "shifted"):
            probe = embedded[f"{person}_{variant}"].embeddings
            distance = (reference - probe).norm().item()
            assert distance < 0.6, (person, variant, distance)
            assert bool(judge.rule.same(reference, probe))


def test_the_two_people_are_not_confused(judge, embedded) -> None:
    names = ["astronaut", "astronaut_mirrored", "astronaut_shifted"]
    others = ["hopper", "hopper_mirrored", "hopper_shifted"]
    for a in names:
        for b in others:
            ea, eb = embedded[a].embeddings, embedded[b].embeddings
            assert (ea - eb).norm().item() > 0.6, (a, b)
            assert not bool(judge.rule.same(ea, eb))


def test_no_face_gives_no_face_not_an_error(judge) -> None:
    coffee = _tensor(skimage.data.coffee())
    gradient = torch.linspace(-1, 1, 128).expand(1, 3, 128, 128).contiguous()
    for image in (coffee, gradient):
        result = judge(image)
        assert result.found.tolist() == [False]
        assert torch.count_nonzero(result.embeddings) == 0


def test_a_batch_mixes_faces_and_no_faces_and_the_metrics_count_them(judge) -> None:
    """Same-size batch: the astronaut, its mirror, and the coffee cup (cropped to 400 x 400)."""
    astronaut = skimage.data.astronaut()[:400, 20:420]
    coffee = skimage.data.coffee()[:400, :400]
    reference = torch.cat([_tensor(astronaut), _tensor(astronaut), _tensor(coffee)])
    probe = torch.cat([_tensor(astronaut[:, ::-1]), _tensor(coffee), _tensor(astronaut)])
    ref, out = judge(reference), judge(probe)
    assert ref.found.tolist() == [True, True, False]
    assert out.found.tolist() == [True, False, True]
    metric = IdentitySimilarity(judge.rule)
    metric.update(ref.embeddings, out.embeddings, ref.found, out.found)
    result = metric.compute()
    # pair 1 re-identified; pair 2's probe has no face (a miss); pair 3's reference has none (not scored)
    assert result["reid_rate"].item() == pytest.approx(0.5)
    assert result["no_face_probe"].item() == 1 and result["no_face_reference"].item() == 1
    assert result["pairs"].item() == 3
    cos = torch.nn.functional.cosine_similarity(ref.embeddings[0], out.embeddings[0], dim=0).item()
    assert result["cos"].item() == pytest.approx(cos)


def test_bad_input_is_a_clear_error(judge) -> None:
    with pytest.raises(ValueError, match=r"expected RGB images \(batch, 3, H, W\)"):
        judge(torch.zeros(3, 32, 32))


def test_keeps_the_recognizer_contract(judge) -> None:
    """ifadit's recognizer contract on two faces and a face-free photo: shapes, zero rows where no face is
    found, the same verdicts alone as in a batch, dlib's Euclidean rule, clear errors on bad input."""
    astronaut = skimage.data.astronaut()[:400, 20:420]
    coffee = skimage.data.coffee()[:400, :400]
    images = torch.cat([_tensor(astronaut), _tensor(astronaut[:, ::-1]), _tensor(coffee)])
    report = check_recognizer(judge, images)
    assert report.passed == tuple(n for n in RECOGNIZER_CHECKS if n != "gradients")
    assert set(report.skipped) == {"gradients"}  # dlib is a judge only: not differentiable
