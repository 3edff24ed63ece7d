"""Identity metrics against hand-computed values on tiny embeddings, with "no face" cases and merge_state."""

from __future__ import annotations

import math

import pytest
import torch

from ifadit.metrics import IdentityRetrieval, IdentitySimilarity, PairwiseIdentityDiversity
from ifadit.recognizers import Verification


def _deg(*angles: float) -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles])


REF = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
PROBE = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 0.0]])
REF_FOUND = torch.tensor([True, True, True, False])
PROBE_FOUND = torch.tensor([True, True, False, True])


def test_identity_similarity_by_hand() -> None:
    metric = IdentitySimilarity(0.5)
    metric.update(REF, PROBE, REF_FOUND, PROBE_FOUND)
    result = metric.compute()
    # both faces only in pairs 0 and 1: cosines 1 and 0
    assert result["cos"].item() == pytest.approx(0.5)
    # scored over the 3 pairs whose reference has a face; pair 2's probe has none (a miss): 1 of 3
    assert result["reid_rate"].item() == pytest.approx(1 / 3)
    counts = (result["no_face_reference"].item(), result["no_face_probe"].item(), result["pairs"].item())
    assert counts == (1, 1, 4)
    assert "distance" not in result


def test_identity_similarity_without_masks_and_with_dlib_style_rule() -> None:
    metric = IdentitySimilarity(Verification(0.5, "euclidean"))
    metric.update(REF[:3], PROBE[:3])
    result = metric.compute()
    assert result["cos"].item() == pytest.approx((1 + 0 + 0.6) / 3)
    distances = [0.0, math.sqrt(2), math.sqrt(0.16 + 0.64)]
    assert result["distance"].item() == pytest.approx(sum(distances) / 3)
    assert result["reid_rate"].item() == pytest.approx(1 / 3)  # only distance 0 <= 0.5


def test_identity_similarity_merge_state_equals_one_pass() -> None:
    whole, first, second = IdentitySimilarity(0.5), IdentitySimilarity(0.5), IdentitySimilarity(0.5)
    whole.update(REF, PROBE, REF_FOUND, PROBE_FOUND)
    first.update(REF[:2], PROBE[:2], REF_FOUND[:2], PROBE_FOUND[:2])
    second.update(REF[2:], PROBE[2:], REF_FOUND[2:], PROBE_FOUND[2:])
    first.merge_state(second)
    for key, value in whole.compute().items():
        torch.testing.assert_close(first.compute()[key], value)


def test_an_empty_metric_is_nan_not_an_error() -> None:
    metric = IdentitySimilarity(0.5)
    metric.update(REF[3:], PROBE[3:], REF_FOUND[3:], PROBE_FOUND[3:])  # reference has no face
    result = metric.compute()
    assert math.isnan(result["cos"].item()) and math.isnan(result["reid_rate"].item())


GALLERY = _deg(0, 20, 90, 110)
LABELS = torch.tensor([0, 0, 1, 1])
PROBES = _deg(85, 5, 115, 0)


def test_top1_retrieval_by_hand() -> None:
    metric = IdentityRetrieval(0.5)
    # probe 0 (85 deg) lands on 90 deg, identity 1: a miss; probes 1 and 2 are hits; probe 3 has no face
    metric.update(PROBES, GALLERY, LABELS, probe_found=torch.tensor([True, True, True, False]))
    result = metric.compute()
    assert result["top1"].item() == pytest.approx(0.5)
    assert result["chance"].item() == pytest.approx(0.5) and result["gallery"].item() == 4


def test_retrieval_leaves_faceless_gallery_entries_out_and_merges() -> None:
    gallery_found = torch.tensor([False, True, True, True])
    whole = IdentityRetrieval(0.5)
    whole.update(PROBES, GALLERY, LABELS, gallery_found=gallery_found)
    result = whole.compute()
    # gallery 20, 90, 110 deg (identities 0, 1, 1): probes of identities 0, 0, 1, 1 at 85, 5, 115, 0 deg
    # land on 90 (miss), 20 (hit), 110 (hit), 20 (miss)
    assert result["top1"].item() == pytest.approx(0.5) and result["gallery"].item() == 3
    assert result["chance"].item() == pytest.approx((1 / 3 + 1 / 3 + 2 / 3 + 2 / 3) / 4)
    first, second = IdentityRetrieval(0.5), IdentityRetrieval(0.5)
    first.update(PROBES[:1], GALLERY[:1], LABELS[:1], gallery_found=gallery_found[:1])
    second.update(PROBES[1:], GALLERY[1:], LABELS[1:], gallery_found=gallery_found[1:])
    first.merge_state(second)
    for key, value in result.items():
        torch.testing.assert_close(first.compute()[key], value)


def test_retrieval_follows_the_recognizers_rule() -> None:
    gallery = torch.tensor([[10.0, 0.0], [0.5, 0.5]])
    probe = torch.tensor([[1.0, 0.2], [1.0, 0.2]])
    labels = torch.tensor([0, 1])
    cosine, euclidean = IdentityRetrieval(0.5), IdentityRetrieval(Verification(0.6, "euclidean"))
    for metric in (cosine, euclidean):
        metric.update(probe, gallery, labels)
    # by angle both probes are nearest (10, 0); by distance both are nearest (0.5, 0.5)
    assert cosine.compute()["top1"].item() == pytest.approx(0.5)  # probe 0 (identity 0) is a hit
    assert euclidean.compute()["top1"].item() == pytest.approx(0.5)  # probe 1 (identity 1) is a hit


def test_pairwise_identity_diversity_by_hand() -> None:
    embeddings = _deg(0, 60, 120)[None]  # one face, three anonymizations: cosines 0.5, -0.5, 0.5
    metric = PairwiseIdentityDiversity(0.4)
    metric.update(embeddings)
    result = metric.compute()
    assert result["cos"].item() == pytest.approx(1 / 6)
    assert result["same_person_rate"].item() == pytest.approx(2 / 3)
    masked = PairwiseIdentityDiversity(0.4)
    masked.update(embeddings, torch.tensor([[True, True, False]]))
    out = masked.compute()
    assert out["cos"].item() == pytest.approx(0.5) and out["no_face"].item() == 1
    merged = PairwiseIdentityDiversity(0.4)
    merged.update(_deg(0, 60, 120)[None])
    other = PairwiseIdentityDiversity(0.4)
    other.update(_deg(0, 0, 180)[None])  # cosines 1, -1, -1
    merged.merge_state(other)
    assert merged.compute()["cos"].item() == pytest.approx((0.5 - 0.5 + 0.5 + 1 - 1 - 1) / 6)
    with pytest.raises(ValueError, match="K >= 2"):
        metric.update(embeddings[:, :1])
