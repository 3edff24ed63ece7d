"""Face detection with MTCNN (facenet-pytorch; its P/R/O-Net weights ship inside the wheel, nothing is
downloaded): every face's box, 5 landmarks and score.

Large photos are detected on a downscaled copy (``max_side``) and the results scaled back, so a 24-MP photo
costs what a 1600 px one does; alignment still reads the full-resolution pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Face:
    """One detected face in photo pixels: ``box`` (x0, y0, x1, y1), ``landmarks`` 5 x (x, y) in the order
    left eye, right eye, nose, left mouth corner, right mouth corner (as seen in the image), ``score``."""

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    score: float

    @property
    def size(self) -> float:
        """The shorter side of the box, in pixels."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def to_dict(self) -> dict[str, object]:
        return {
            "box": [round(v, 3) for v in self.box],
            "landmarks": [[round(x, 3), round(y, 3)] for x, y in self.landmarks],
            "score": round(self.score, 5),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Face:
        box = tuple(float(v) for v in data["box"])  # type: ignore[union-attr]
        landmarks = tuple((float(p[0]), float(p[1])) for p in data["landmarks"])  # type: ignore[union-attr]
        if len(box) != 4 or len(landmarks) != 5:
            raise ValueError("a face needs a 4-value box and 5 landmarks")
        return cls(box, landmarks, float(data.get("score", 1.0)))  # type: ignore[arg-type]


@dataclass
class Detection:
    """What one photo gave: the faces to process, the faces too small to process, and the scale used."""

    faces: list[Face]
    tiny: list[Face]
    scale: float  # detection ran on the photo resized by this factor (1.0: full size)


class FaceDetector:
    """MTCNN over an RGB uint8 photo (H, W, 3), returning faces sorted left to right.

    ``min_face_size`` is the smallest face (box side, in photo pixels) that is anonymized; MTCNN searches
    down to ``search_min_size`` so that smaller faces are found and reported rather than silently missed.
    """

    def __init__(
        self,
        min_face_size: int = 24,
        search_min_size: int = 12,
        max_side: int = 1600,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        device: str | torch.device = "cpu",
    ) -> None:
        from facenet_pytorch import MTCNN

        if min_face_size < 1 or search_min_size < 1 or max_side < 64:
            raise ValueError("min_face_size and search_min_size must be >= 1 and max_side >= 64")
        self.min_face_size = min_face_size
        self.search_min_size = min(search_min_size, min_face_size)
        self.max_side = max_side
        self.device = torch.device(device)
        self.mtcnn = MTCNN(
            keep_all=True,
            min_face_size=self.search_min_size,
            thresholds=list(thresholds),
            select_largest=False,
            device=self.device,
        ).eval()

    def _downscaled(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale >= 1.0:
            return image, 1.0
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        tensor = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float()
        small = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)
        array = small.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        return np.ascontiguousarray(array), size[1] / width

    def detect(self, image: np.ndarray) -> Detection:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"detection needs an RGB uint8 photo (H, W, 3), got {image.dtype} {image.shape}")
        small, scale = self._downscaled(image)
        if min(small.shape[:2]) < 12:
            return Detection([], [], scale)
        with torch.no_grad():
            boxes, probs, points = self.mtcnn.detect(small, landmarks=True)
        faces: list[Face] = []
        if boxes is not None:
            for box, prob, lm in zip(boxes, probs, points, strict=True):
                box = np.asarray(box, dtype=np.float64) / scale
                lm = np.asarray(lm, dtype=np.float64) / scale
                faces.append(Face(tuple(box.tolist()), tuple(map(tuple, lm.tolist())), float(prob)))
        faces.sort(key=lambda f: (f.box[0], f.box[1]))
        keep = [f for f in faces if f.size >= self.min_face_size]
        tiny = [f for f in faces if f.size < self.min_face_size]
        return Detection(keep, tiny, scale)


__all__ = ["Detection", "Face", "FaceDetector"]
