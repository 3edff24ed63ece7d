"""Utility metrics: detection rate, box IoU and landmark error by hand; MTCNN on a real photo."""

from __future__ import annotations

import pytest
import skimage.data
import torch
import torch.nn.functional as F

from ifadit.metrics import Detections, DetectionUtility, MTCNNDetector

EYES_AND_REST = torch.tensor([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [2.0, 8.0], [8.0, 8.0]])


def _detections(found: list[bool], boxes: list[list[float]], landmarks: list[torch.Tensor]) -> Detections:
    return Detections(torch.tensor(found), torch.tensor(boxes), torch.stack(landmarks))


def test_detection_utility_by_hand() -> None:
    zero = torch.zeros(5, 2)
    reference = _detections(
        [True, True, False], [[0, 0, 10, 10], [0, 0, 4, 4], [0, 0, 0, 0]],
        [EYES_AND_REST, EYES_AND_REST, zero],
    )
    probe = _detections(
        [True, False, True], [[0, 0, 10, 5], [0, 0, 0, 0], [1, 1, 3, 3]],
        [EYES_AND_REST + torch.tensor([3.0, 4.0]), zero, EYES_AND_REST],
    )
    metric = DetectionUtility()
    metric.update(reference, probe)
    result = metric.compute()
    assert result["detection_rate"].item() == pytest.approx(2 / 3)
    assert result["reference_detection_rate"].item() == pytest.approx(2 / 3)
    assert result["kept_rate"].item() == pytest.approx(1 / 2)
    assert result["bbox_iou"].item() == pytest.approx(0.5)  # (10 x 5) / (10 x 10), image 0 only
    assert result["landmark_nme"].item() == pytest.approx(0.5)  # every point 5 px off, eyes 10 px apart
    half = DetectionUtility()
    half.update(
        Detections(reference.found[2:], reference.boxes[2:], reference.landmarks[2:]),
        Detections(probe.found[2:], probe.boxes[2:], probe.landmarks[2:]),
    )
    first = DetectionUtility()
    first.update(
        Detections(reference.found[:2], reference.boxes[:2], reference.landmarks[:2]),
        Detections(probe.found[:2], probe.boxes[:2], probe.landmarks[:2]),
    )
    first.merge_state(half)
    for key, value in result.items():
        torch.testing.assert_close(first.compute()[key], value)


def test_detections_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"landmarks \(B, 5, 2\)"):
        Detections(torch.ones(2, dtype=torch.bool), torch.zeros(2, 4), torch.zeros(2, 4, 2))


def test_mtcnn_finds_the_astronaut_and_nothing_in_a_gradient() -> None:
    pixels = torch.from_numpy(skimage.data.astronaut().copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    photo = F.interpolate(pixels, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)
    gradient = torch.linspace(-1, 1, 256).expand(1, 3, 256, 256)
    detector = MTCNNDetector()
    found = detector(torch.cat([photo, gradient]))
    assert found.found.tolist() == [True, False]
    x1, y1, x2, y2 = found.boxes[0].tolist()
    # the astronaut's face: dlib puts it at x 175-265, y 76-166 in the 512 px photo (half that here)
    assert 70 < (x1 + x2) / 2 < 150 and 30 < (y1 + y2) / 2 < 100
    points = found.landmarks[0]
    inside = (points[:, 0] >= x1) & (points[:, 0] <= x2) & (points[:, 1] >= y1) & (points[:, 1] <= y2)
    assert bool(inside.all())
    assert points[0, 0] < points[1, 0]  # left eye left of the right eye (image coordinates)
    assert torch.count_nonzero(found.boxes[1]) == 0
