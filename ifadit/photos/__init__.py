"""Real photos: detection (MTCNN), alignment to an FFHQ-style template, paste-back, files and metadata.

The model-facing entry is :class:`ifadit.Anonymizer` (``ifadit/api.py``); the batch command line over files
is :mod:`ifadit.photos.batch`.
"""

from ifadit.photos.align import MaskFn, ellipse_masks, estimate_similarity, ffhq_template, paste_faces
from ifadit.photos.detect import Detection, Face, FaceDetector
from ifadit.photos.io import Photo, PhotoError, read_photo

__all__ = [
    "Detection",
    "Face",
    "FaceDetector",
    "MaskFn",
    "Photo",
    "PhotoError",
    "ellipse_masks",
    "estimate_similarity",
    "ffhq_template",
    "paste_faces",
    "read_photo",
]
