"""Utility: is an anonymized face still a face where the original was? Face-detection rate, bounding-box IoU
and 5-landmark distance to the original's detection.

:class:`DetectionUtility` takes :class:`Detections` from any detector; :class:`MTCNNDetector` makes them
with facenet-pytorch's MTCNN, whose weights ship inside the package (nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchvision.ops import box_iou


@dataclass
class Detections:
    """One face per image (the largest): ``found`` (B,) bool, ``boxes`` (B, 4) as x1, y1, x2, y2 pixels,
    ``landmarks`` (B, 5, 2) x, y pixels in MTCNN's order (left eye, right eye, nose, mouth left, mouth
    right). Rows without a face are zero."""

    found: Tensor
    boxes: Tensor
    landmarks: Tensor

    def __post_init__(self) -> None:
        n = self.found.shape[0]
        if self.boxes.shape != (n, 4) or self.landmarks.shape != (n, 5, 2):
            raise ValueError(
                f"expected found (B,), boxes (B, 4), landmarks (B, 5, 2); got {tuple(self.found.shape)}, "
                f"{tuple(self.boxes.shape)}, {tuple(self.landmarks.shape)}"
            )


class MTCNNDetector(nn.Module):
    """facenet-pytorch MTCNN on [-1, 1] images: the largest face of each image, with its 5 landmarks.

    ``min_face_size`` (px) is MTCNN's smallest searched face; 20 (its default) finds the faces of 64 px
    SynthFaces images."""

    def __init__(
        self, min_face_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    ) -> None:
        super().__init__()
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), select_largest=True)
        self.mtcnn.eval()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> MTCNNDetector:
        # MTCNN keeps its device as an attribute and moves its inputs there: follow .to()/.cuda().
        super()._apply(fn, recurse)
        self.mtcnn.device = next(self.mtcnn.parameters()).device
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Detections:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (batch, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        n = images.shape[0]
        found = torch.zeros(n, dtype=torch.bool)
        boxes, landmarks = torch.zeros(n, 4), torch.zeros(n, 5, 2)
        if n == 0:
            return Detections(found, boxes, landmarks)
        pixels = ((images.detach().float() + 1.0) * 127.5).clamp(0, 255).permute(0, 2, 3, 1)
        batch_boxes, _, batch_points = self.mtcnn.detect(pixels, landmarks=True)
        for i, (box, points) in enumerate(zip(batch_boxes, batch_points, strict=True)):
            if box is None:
                continue
            found[i] = True
            # MTCNN returns object arrays when every image has the same number of faces
            boxes[i] = torch.from_numpy(np.asarray(box[0], dtype=np.float32))
            landmarks[i] = torch.from_numpy(np.asarray(points[0], dtype=np.float32))
        device = images.device
        return Detections(found.to(device), boxes.to(device), landmarks.to(device))


class DetectionUtility(Metric):
    """Reference (original) vs probe (anonymized) detections, image by image.

    ``compute()`` gives ``detection_rate`` (probes with a face / all probes), ``reference_detection_rate``,
    ``kept_rate`` (probes with a face among images whose reference had one), and over the images where both
    have a face: ``bbox_iou`` (mean IoU) and ``landmark_nme`` (mean 5-landmark distance divided by the
    reference's inter-ocular distance, the usual normalised mean error).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("images", "reference_found", "probe_found", "both"):
            self.add_state(name, torch.tensor(0), dist_reduce_fx="sum")
        for name in ("iou_sum", "nme_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, reference: Detections, probe: Detections) -> None:
        if reference.found.shape != probe.found.shape:
            raise ValueError("reference and probe detections differ in batch size")
        both = reference.found & probe.found
        self.images += reference.found.shape[0]
        self.reference_found += reference.found.sum()
        self.probe_found += probe.found.sum()
        self.both += both.sum()
        if both.any():
            ref_boxes, probe_boxes = reference.boxes[both].double(), probe.boxes[both].double()
            self.iou_sum += box_iou(ref_boxes, probe_boxes).diagonal().sum()
            ref_points, probe_points = reference.landmarks[both].double(), probe.landmarks[both].double()
            inter_ocular = (ref_points[:, 0] - ref_points[:, 1]).norm(dim=1).clamp_min(1e-6)
            error = (probe_points - ref_points).norm(dim=2).mean(dim=1) / inter_ocular
            self.nme_sum += error.sum()

    def compute(self) -> dict[str, Tensor]:
        def ratio(a: Tensor, b: Tensor) -> Tensor:
            return a.double() / b.double() if b > 0 else torch.tensor(float("nan"))

        # kept: probes with a face among the images whose reference had one (same-image pairs only)
        return {
            "detection_rate": ratio(self.probe_found, self.images),
            "reference_detection_rate": ratio(self.reference_found, self.images),
            "kept_rate": ratio(self.both, self.reference_found),
            "bbox_iou": ratio(self.iou_sum, self.both),
            "landmark_nme": ratio(self.nme_sum, self.both),
        }
