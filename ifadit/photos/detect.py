"""Face detection with MTCNN (facenet-pytorch; its P/R/O-Net weights ship inside the wheel, nothing is
downloaded): every face's box, 5 landmarks and score, over the whole photo at the resolution its smallest
searched face needs.

A photo is searched as an image pyramid of **levels**. Level 0 is the photo at the scale where the
smallest searched face (``search_min_size``, in photo pixels) fills MTCNN's 12 px window: full resolution
for the default 12 px. Each next level is a few times smaller and searches the larger faces, until the photo
fits in one tile. A level larger than ``max_side`` is cut into overlapping tiles of that side, so MTCNN's own
pyramid never runs on one giant tensor: memory stays that of one tile, whatever the photo's size. A tile
keeps only the faces whose centre lies in its own share of the overlap and that are small enough to lie whole
inside it (at most half the overlap); larger faces are the next level's. Tiles of one flat colour hold no face
and are skipped, as is the flat border around what a tile holds.

MTCNN's last stage scores each candidate; a face at or above ``thresholds[2]`` is processed, one between
``unsure_threshold`` and that is reported as *unsure* (the photo pipeline blurs it rather than leave it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

PNET_WINDOW = 12  # MTCNN's smallest window: the smallest face it finds at the scale it searches
LEVEL_MIN_FACE = 24  # levels after the first search from this size (in their pixels): MTCNN is surer there
MIN_INSIDE = 0.2  # a face found across the edge counts when this share of its box lies in the photo
FLAT_RANGE = 2  # pixels within this many grey levels of a tile's corner pixel are its flat background
FLAT_STEP = 4  # ... judged on every 4th pixel of every 4th row


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
    """What one photo gave: the faces to process, the faces too small (or too degenerate) to process, the
    regions MTCNN is unsure about, the scale of the finest level and how many tiles MTCNN ran on."""

    faces: list[Face]
    tiny: list[Face]
    scale: float  # the finest level: the photo resized by this factor (1.0: full resolution)
    unsure: list[Face] = field(default_factory=list)
    tiles: int = 0


@dataclass
class _Level:
    scale: float
    min_face: int  # MTCNN's smallest searched face, in this level's pixels
    height: int
    width: int
    last: bool  # fits in one tile: every face it finds is kept


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: tiles of ``tile`` px overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _cores(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """Each tile's own share of its axis: up to the middle of its overlap with each neighbour."""
    cores = []
    for i, start in enumerate(starts):
        lo = -math.inf if i == 0 else (start + starts[i - 1] + tile) / 2
        hi = math.inf if i == len(starts) - 1 else (start + tile + starts[i + 1]) / 2
        cores.append((lo, hi))
    return cores


def _window(pixels: np.ndarray, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """``pixels[y0 : y0 + height, x0 : x0 + width]`` where coordinates outside the image read its mirror
    image across the nearest edge: a face cut by the photo's edge is completed by its mirror half, which
    MTCNN finds where it misses half a face."""
    rows, cols = pixels.shape[:2]

    def mirrored(start: int, count: int, length: int) -> np.ndarray:
        idx = np.arange(start, start + count)
        idx = np.where(idx < 0, -idx - 1, idx)
        idx = np.where(idx >= length, 2 * length - idx - 1, idx)
        return np.clip(idx, 0, length - 1)

    if x0 >= 0 and y0 >= 0 and x0 + width <= cols and y0 + height <= rows:
        return pixels[y0 : y0 + height, x0 : x0 + width]
    return pixels[np.ix_(mirrored(y0, height, rows), mirrored(x0, width, cols))]


def _inside_share(box: np.ndarray, width: int, height: int) -> float:
    """The share of ``box`` (x0, y0, x1, y1) lying inside a ``width`` x ``height`` image."""
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    w = max(min(box[2], width) - max(box[0], 0.0), 0.0)
    h = max(min(box[3], height) - max(box[1], 0.0), 0.0)
    return float(w * h / area) if area > 0 else 0.0


def _face(box: np.ndarray, landmarks: np.ndarray, score: float, scale: float) -> Face:
    """A detection in level pixels -> a :class:`Face` in photo pixels (pixel centres scale about
    their edges)."""
    box = (box + 0.5) / scale - 0.5
    landmarks = (landmarks + 0.5) / scale - 0.5
    return Face(tuple(box.tolist()), tuple(map(tuple, landmarks.tolist())), score)


def _overlaps(a: Face, b: Face, share: float = 0.2) -> bool:
    """Whether two boxes share more than ``share`` of the smaller one."""
    w = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
    h = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    if w <= 0 or h <= 0:
        return False
    smaller = min((f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in (a, b))
    return w * h > share * smaller


def _usable(face: Face) -> bool:
    """Landmarks the alignment can use: finite, the eyes and the mouth apart."""
    lm = np.asarray(face.landmarks, dtype=np.float64)
    if not np.isfinite(lm).all() or not np.isfinite(face.box).all():
        return False
    eyes = np.linalg.norm(lm[1] - lm[0])
    eye_to_mouth = np.linalg.norm((lm[3] + lm[4]) / 2 - (lm[0] + lm[1]) / 2)
    return bool(eyes >= 1.0 and eye_to_mouth >= 1.0)


def _suppress(faces: list[Face], iou: float = 0.4, inside: float = 0.6) -> list[Face]:
    """Overlapping detections of one face (from two levels or two tiles) reduced to the surest; a box lying
    mostly inside a surer one (a part of a face found as a face) dropped too."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -f.score):
        x0, y0, x1, y1 = face.box
        area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
        duplicate = False
        for other in kept:
            a0, b0, a1, b1 = other.box
            w = max(min(x1, a1) - max(x0, a0), 0.0)
            h = max(min(y1, b1) - max(y0, b0), 0.0)
            common = w * h
            other_area = (a1 - a0) * (b1 - b0)
            union = area + other_area - common
            if (union > 0 and common / union > iou) or (area > 0 and common / area > inside):
                duplicate = True
                break
        if not duplicate:
            kept.append(face)
    return kept


class FaceDetector:
    """MTCNN over an RGB uint8 photo (H, W, 3), returning faces sorted left to right.

    ``min_face_size`` is the smallest face (box side, in photo pixels) that is anonymized; MTCNN searches
    down to ``search_min_size`` (photo pixels) so that smaller faces are found and reported rather than
    silently missed. ``max_side`` is the largest image MTCNN sees at once (the tile side). ``edges``: also
    search the windows mirrored across the photo's edges, for faces the edge cuts.
    """

    def __init__(
        self,
        min_face_size: int = 24,
        search_min_size: int = 12,
        max_side: int = 1600,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        unsure_threshold: float = 0.5,
        device: str | torch.device = "cpu",
        edges: bool = True,
    ) -> None:
        from facenet_pytorch import MTCNN

        if min_face_size < 1 or search_min_size < 1 or max_side < 64:
            raise ValueError("min_face_size and search_min_size must be >= 1 and max_side >= 64")
        if not 0 < unsure_threshold <= thresholds[2]:
            raise ValueError("unsure_threshold must lie in (0, thresholds[2]]")
        self.min_face_size = min_face_size
        self.search_min_size = min(search_min_size, min_face_size)
        self.max_side = max_side
        self.overlap = max_side // 5
        self.face_threshold = thresholds[2]
        self.unsure_threshold = unsure_threshold
        self.edges = edges
        self.device = torch.device(device)
        self.mtcnn = MTCNN(
            keep_all=True,
            min_face_size=PNET_WINDOW,
            thresholds=[thresholds[0], thresholds[1], unsure_threshold],
            select_largest=False,
            device=self.device,
        ).eval()

    def levels(self, height: int, width: int) -> list[_Level]:
        """The pyramid for a ``height`` x ``width`` photo (see the module's docstring)."""
        cap = self.overlap // 2  # the largest face a tiled level keeps, in its pixels
        step = max(cap * 0.75 / LEVEL_MIN_FACE, 2.0)  # the next level's smallest face is 3/4 of that cap
        scale, min_face = min(1.0, PNET_WINDOW / self.search_min_size), PNET_WINDOW
        levels: list[_Level] = []
        while True:
            h, w = max(round(height * scale), 1), max(round(width * scale), 1)
            last = max(h, w) <= self.max_side
            levels.append(_Level(scale, min_face, h, w, last))
            if last:
                return levels
            scale, min_face = scale / step, LEVEL_MIN_FACE

    def _mirror(self, level: _Level) -> int:
        """How far the edge windows reach past (and into) the photo: a little more than half the largest face
        the level keeps, so a face cut in half by the edge is whole once mirrored."""
        if not level.last:
            return self.overlap // 2
        return max(self.overlap // 2, round(0.25 * min(level.width, level.height)))

    def _edge_windows(self, level: _Level) -> list[tuple[int, int, int, int]]:
        """Windows (x0, y0, width, height) in level pixels straddling each edge of the photo, half in its
        mirror image: where MTCNN finds the faces the edge cuts."""
        pad, tile = self._mirror(level), self.max_side
        w, h = level.width, level.height
        windows = []
        # along the edge the windows stay inside the photo: a corner mirrored twice makes face-like patterns
        for start in _starts(h, tile, self.overlap):
            span = min(tile, h)
            windows += [(-pad, start, 2 * pad, span), (w - pad, start, 2 * pad, span)]
        for start in _starts(w, tile, self.overlap):
            span = min(tile, w)
            windows += [(start, -pad, span, 2 * pad), (start, h - pad, span, 2 * pad)]
        return windows

    @staticmethod
    def _resized(image: np.ndarray, level: _Level) -> np.ndarray:
        if level.scale >= 1.0:
            return image
        # Pillow's reduction is antialiased and works in uint8: no float copy of a large photo
        return np.asarray(Image.fromarray(image).resize((level.width, level.height), Image.BILINEAR))

    def _detect_tile(self, tile: np.ndarray, min_face: int) -> list[tuple[np.ndarray, float, np.ndarray]]:
        """MTCNN on one tile, cut down to the part that is not one flat colour (nothing else can hold a
        face), with a margin of context; boxes and landmarks in tile pixels."""
        # every FLAT_STEP-th pixel: a face (12 px or more) cannot lie between the samples
        sampled = tile[::FLAT_STEP, ::FLAT_STEP].astype(np.int16)
        differs = (np.abs(sampled - sampled[0, 0]) > FLAT_RANGE).any(axis=2)
        rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
        if rows.size == 0:
            return []
        margin = 2 * PNET_WINDOW + FLAT_STEP
        y0, x0 = max(int(rows[0]) * FLAT_STEP - margin, 0), max(int(cols[0]) * FLAT_STEP - margin, 0)
        y1, x1 = int(rows[-1]) * FLAT_STEP + margin + 1, int(cols[-1]) * FLAT_STEP + margin + 1
        part = np.ascontiguousarray(tile[y0:y1, x0:x1])
        if min(part.shape[:2]) < PNET_WINDOW:
            return []
        self.mtcnn.min_face_size = min_face
        with torch.no_grad():
            boxes, probs, points = self.mtcnn.detect(part, landmarks=True)
        if boxes is None:
            return []
        shift = np.array([x0, y0], dtype=np.float64)
        return [
            (np.asarray(b, np.float64) + np.tile(shift, 2), float(p), np.asarray(lm, np.float64) + shift)
            for b, p, lm in zip(boxes, probs, points, strict=True)
        ]

    def detect(self, image: np.ndarray) -> Detection:
        """Every face of the photo: processable, too small (``tiny``) and unsure, in photo pixels."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"detection needs an RGB uint8 photo (H, W, 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        levels = self.levels(height, width)
        found: list[Face] = []
        tiles = 0
        for level in levels:
            pixels = self._resized(image, level)
            plain: list[Face] = []
            tile = max(level.width, level.height) if level.last else self.max_side
            xs, ys = _starts(level.width, tile, self.overlap), _starts(level.height, tile, self.overlap)
            for x0, (cx0, cx1) in zip(xs, _cores(xs, tile, level.width), strict=True):
                for y0, (cy0, cy1) in zip(ys, _cores(ys, tile, level.height), strict=True):
                    tiles += 1
                    part = pixels[y0 : y0 + tile, x0 : x0 + tile]
                    for box, prob, lm in self._detect_tile(part, level.min_face):
                        box, lm = box + np.array([x0, y0, x0, y0]), lm + np.array([x0, y0])
                        if not level.last:  # a face this tile owns and holds whole; larger: the next level's
                            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                            inside = cx0 <= cx < cx1 and cy0 <= cy < cy1
                            if not inside or min(box[2] - box[0], box[3] - box[1]) > self.overlap // 2:
                                continue
                        plain.append(_face(box, lm, prob, level.scale))
            mirrored: list[Face] = []
            for x0, y0, w, h in self._edge_windows(level) if self.edges else []:
                tiles += 1
                for box, prob, lm in self._detect_tile(_window(pixels, x0, y0, w, h), level.min_face):
                    box, lm = box + np.array([x0, y0, x0, y0]), lm + np.array([x0, y0])
                    if _inside_share(box, level.width, level.height) < MIN_INSIDE:
                        continue  # the mirror image of a face inside the photo
                    if not level.last and min(box[2] - box[0], box[3] - box[1]) > self.overlap // 2:
                        continue
                    mirrored.append(_face(box, lm, prob, level.scale))
            # a face the plain pass found whole wins over what its mirror image made of it
            found += plain + [f for f in mirrored if not any(_overlaps(f, g) for g in plain)]
            del pixels
        found = _suppress(found)
        found.sort(key=lambda f: (f.box[0], f.box[1]))
        sure = [f for f in found if f.score >= self.face_threshold]
        unsure = [f for f in found if f.score < self.face_threshold]
        keep = [f for f in sure if f.size >= self.min_face_size and _usable(f)]
        tiny = [f for f in sure if not (f.size >= self.min_face_size and _usable(f))]
        return Detection(keep, tiny, levels[0].scale, unsure, tiles)


__all__ = ["Detection", "Face", "FaceDetector"]
