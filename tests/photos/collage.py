"""Large test photos built from the real test photos: their faces cut out, scaled to chosen sizes and laid on
a big canvas, with where every eye and mouth corner lands. The expected faces come from the detector run on
each source photo at its full resolution, so the truth does not depend on the detector under test seeing the
collage."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from photo_samples import astronaut, grace_hopper
from PIL import Image

from ifadit.photos.detect import Face, FaceDetector


@dataclass
class Placed:
    """One face on the canvas: its expected box and 5 landmarks (canvas pixels) and its box side."""

    box: np.ndarray  # (4,) x0, y0, x1, y1
    landmarks: np.ndarray  # (5, 2)
    size: float


@dataclass
class Collage:
    pixels: np.ndarray  # (H, W, 3) uint8
    faces: list[Placed]


@functools.cache
def reference_faces() -> list[tuple[np.ndarray, Face]]:
    """Each source photo (and its mirror image) with its one face, detected at full resolution."""
    detector = FaceDetector(min_face_size=12)
    sources = []
    for pixels in (astronaut(), grace_hopper()):
        for image in (pixels, np.ascontiguousarray(pixels[:, ::-1])):
            faces = detector.detect(image).faces
            assert len(faces) == 1, "a source photo must hold one face"
            sources.append((image, faces[0]))
    return sources


def place(canvas: np.ndarray, source: np.ndarray, face: Face, size: float, at: tuple[int, int]) -> Placed:
    """Cut ``face`` out of ``source`` with some context, scale it so its box side becomes ``size`` px and
    paste it with its top-left corner at ``at`` (x, y)."""
    box = np.asarray(face.box)
    centre = (box[:2] + box[2:]) / 2
    half = 1.3 * face.size
    x0, y0 = (max(int(v), 0) for v in centre - half)
    x1 = min(int(centre[0] + half), source.shape[1])
    y1 = min(int(centre[1] + half), source.shape[0])
    factor = size / face.size
    width, height = max(round((x1 - x0) * factor), 1), max(round((y1 - y0) * factor), 1)
    patch = np.asarray(Image.fromarray(source[y0:y1, x0:x1]).resize((width, height), Image.LANCZOS))
    px, py = at
    canvas[py : py + height, px : px + width] = patch
    sx, sy = width / (x1 - x0), height / (y1 - y0)

    def moved(points: np.ndarray) -> np.ndarray:  # pixel centres through the crop and the resize
        out = np.empty_like(points)
        out[..., 0] = (points[..., 0] - x0 + 0.5) * sx - 0.5 + px
        out[..., 1] = (points[..., 1] - y0 + 0.5) * sy - 0.5 + py
        return out

    corners = moved(box.reshape(2, 2)).reshape(4)
    return Placed(corners, moved(np.asarray(face.landmarks)), size)


def collage(
    width: int, height: int, sizes: list[float], origin: tuple[int, int], background: int = 118
) -> Collage:
    """A ``width`` x ``height`` canvas of one flat colour with one face of each size in ``sizes``, laid in
    rows from ``origin``; the sources take turns."""
    canvas = np.full((height, width, 3), background, dtype=np.uint8)
    sources = reference_faces()
    placed = []
    x, y = origin
    row_height = 0
    for i, size in enumerate(sizes):
        source, face = sources[i % len(sources)]
        extent = int(2.6 * size) + 8
        if x + extent > width:
            x, y = origin[0], y + row_height
            row_height = 0
        placed.append(place(canvas, source, face, size, (x, y)))
        x += extent
        row_height = max(row_height, extent)
    return Collage(canvas, placed)
