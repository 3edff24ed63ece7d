"""Real photos: detection (MTCNN), FFHQ alignment, blending and paste-back, files and metadata, and
``ifadit align`` (photos -> an aligned training set).

The model-facing entry is :class:`ifadit.Anonymizer` (``ifadit/api.py``); the batch command line over files
is :mod:`ifadit.photos.batch`, the aligner over folders :mod:`ifadit.photos.aligner`.
"""

from ifadit.photos.align import MaskFn, alignment_matrices, crop_faces, ellipse_masks, ffhq_quads, paste_faces
from ifadit.photos.blend import blend, paste_masks, soften_masks
from ifadit.photos.detect import Detection, Face, FaceDetector
from ifadit.photos.io import Photo, PhotoError, read_photo

__all__ = [
    "Detection",
    "Face",
    "FaceDetector",
    "MaskFn",
    "Photo",
    "PhotoError",
    "alignment_matrices",
    "blend",
    "crop_faces",
    "ellipse_masks",
    "ffhq_quads",
    "paste_faces",
    "paste_masks",
    "read_photo",
    "soften_masks",
]
