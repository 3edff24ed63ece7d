"""``ifadit align``: a folder of raw photos -> a folder of FFHQ-aligned face crops for the folder datamodule.

Every photo under the raw folder is read upright, its faces found by MTCNN and each face cut out by FFHQ's
alignment (:mod:`ifadit.photos.align`, the same crop ``ifadit anonymize`` uses) as a PNG at the same relative
path, so identity sub-folders (``raw/<person>/*.jpg``) stay identity sub-folders. A photo with no usable face
is reported and skipped. Each finished photo is recorded in ``ifadit-align.jsonl`` in the output folder (its
faces, their landmarks and the files written), so a re-run skips what is done and resumes after an
interruption.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ifadit.photos.align import alignment_matrices, crop_faces
from ifadit.photos.detect import Face, FaceDetector
from ifadit.photos.io import PhotoError, collect_inputs, read_photo, write_atomic

MANIFEST = "ifadit-align.jsonl"
FACE_CHOICES = ("all", "largest")


@dataclass
class AlignOptions:
    """What ``ifadit align`` writes: crops of ``size`` px; ``faces``: every face of a photo or only its
    largest (for identity folders holding group photos); faces under ``min_face_size`` px are not used."""

    size: int = 256
    faces: str = "all"
    min_face_size: int = 64
    device: str = "cpu"
    detect_max_side: int = 1600
    progress: bool | None = None  # None: a progress bar when stderr is a terminal


@dataclass
class AlignSummary:
    """What a run did: files written, photos done earlier, photos without a usable face, failures."""

    written: list[Path] = field(default_factory=list)
    done_before: int = 0
    no_face: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    photos: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def _read_manifest(path: Path, size: int) -> dict[str, dict[str, Any]]:
    """The photos a previous run finished, by source path; refuses a folder aligned at another size."""
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            source = str(entry["source"])
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines):
                continue  # a line cut off by an interruption: that photo is simply aligned again
            raise ValueError(f"{path} line {number} is not an ifadit align record") from None
        if entry.get("size") != size:
            raise ValueError(
                f"{path.parent} holds faces aligned at {entry.get('size')} px, not {size}: "
                "align into another folder"
            )
        done[source] = entry
    return done


def _finished(entry: dict[str, Any] | None, out_dir: Path) -> bool:
    if entry is None:
        return False
    return all((out_dir / name).is_file() for name in entry.get("outputs", []))


def output_names(relative: Path, count: int, taken_stems: set[Path]) -> list[Path]:
    """The PNG file(s) of a photo's faces: ``name.png`` for one face, ``name_f0.png``, ``name_f1.png`` … for
    several; ``name.jpg.png`` where another photo in the folder has the same stem."""
    base = relative.with_suffix("") if relative.with_suffix("") not in taken_stems else relative
    if count == 1:
        return [base.with_name(base.name + ".png")]
    return [base.with_name(f"{base.name}_f{i}.png") for i in range(count)]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def aligned_crops(pixels: np.ndarray, faces: list[Face], size: int) -> np.ndarray:
    """FFHQ-aligned crops (F, size, size, 3) uint8 of the ``faces`` of an RGB uint8 photo (H, W, 3)."""
    photo = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 127.5 - 1
    landmarks = torch.tensor([f.landmarks for f in faces], dtype=torch.float32)
    crops = crop_faces(photo, alignment_matrices(landmarks, size), size)
    return ((crops + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _check_folders(raw_dir: Path, out_dir: Path) -> None:
    if not raw_dir.is_dir():
        raise ValueError(
            f"raw photo folder {raw_dir} " + ("is not a folder" if raw_dir.exists() else "does not exist")
        )
    raw, out = raw_dir.resolve(), out_dir.resolve()
    if out == raw or raw in out.parents:
        raise ValueError(f"the output folder {out_dir} must not lie inside the raw photo folder {raw_dir}")


def align_folder(
    raw_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: AlignOptions | None = None,
    detector: FaceDetector | None = None,
    report: Callable[[str], None] | None = None,
) -> AlignSummary:
    """Align every face of every photo under ``raw_dir`` into ``out_dir`` (see the module docstring).
    ``report`` gets one line per photo skipped or failed (stderr by default)."""
    from tqdm import tqdm

    options = options or AlignOptions()
    if options.size < 16:
        raise ValueError(f"--size must be at least 16 px, got {options.size}")
    if options.faces not in FACE_CHOICES:
        raise ValueError(f"--faces must be one of {', '.join(FACE_CHOICES)}, got {options.faces!r}")
    raw, out = Path(raw_dir), Path(out_dir)
    _check_folders(raw, out)
    say = report or (lambda line: print(line, file=sys.stderr))
    inputs = collect_inputs([raw])
    if not inputs:
        raise ValueError(f"no JPEG, PNG or WebP photo under {raw}")
    manifest = out / MANIFEST
    done = _read_manifest(manifest, options.size)
    stems: dict[Path, int] = {}
    for _, relative in inputs:
        stems[relative.with_suffix("")] = stems.get(relative.with_suffix(""), 0) + 1
    taken = {stem for stem, count in stems.items() if count > 1}
    summary = AlignSummary(photos=len(inputs))
    out.mkdir(parents=True, exist_ok=True)
    disable = None if options.progress is None else not options.progress
    bar = tqdm(inputs, desc="align", unit="photo", file=sys.stderr, disable=disable)
    with manifest.open("a", encoding="utf-8") as record:
        for source, relative in bar:
            key = relative.as_posix()
            if _finished(done.get(key), out):
                summary.done_before += 1
                continue
            if detector is None:  # made on first use: a finished folder needs none
                detector = FaceDetector(
                    min_face_size=options.min_face_size,
                    max_side=options.detect_max_side,
                    device=options.device,
                    edges=False,  # a face the photo's edge cuts makes a poor training face: not searched
                )
            try:
                entry = _align_one(source, relative, out, options, detector, taken, summary)
            except PhotoError as exc:
                summary.failed.append((source, str(exc)))
                say(f"ifadit align: error: {source}: {exc}")
                continue
            if entry["status"] != "ok":
                summary.no_face.append((source, entry["status"]))
                say(f"ifadit align: skipped: {source}: {entry['status']}")
            elif len(entry["outputs"]) > 1 and len(relative.parts) > 1:
                say(
                    f"ifadit align: note: {source}: {len(entry['outputs'])} faces in an identity folder, all "
                    "written under that identity (--faces largest keeps one)"
                )
            record.write(json.dumps(entry, separators=(",", ":")) + "\n")
            record.flush()
    bar.close()
    return summary


def _align_one(
    source: Path,
    relative: Path,
    out: Path,
    options: AlignOptions,
    detector: FaceDetector,
    taken: set[Path],
    summary: AlignSummary,
) -> dict[str, Any]:
    """Detect and write one photo's faces; the manifest record of what was done."""
    photo = read_photo(source)
    detection = detector.detect(photo.pixels)
    entry: dict[str, Any] = {"source": relative.as_posix(), "size": options.size}
    faces = list(detection.faces)
    if not faces:
        smallest = (
            f" (the largest found is {max(f.size for f in detection.tiny):.0f} px)" if detection.tiny else ""
        )
        entry.update(status=f"no face of at least {options.min_face_size} px{smallest}", outputs=[], faces=[])
        return entry
    if options.faces == "largest":
        faces = [max(faces, key=lambda f: f.size)]
    names = output_names(relative, len(faces), taken)
    for name, crop in zip(names, aligned_crops(photo.pixels, faces, options.size), strict=True):
        summary.written.append(write_atomic(out / name, _png(crop), overwrite=True))
    entry.update(status="ok", outputs=[n.as_posix() for n in names], faces=[f.to_dict() for f in faces])
    return entry


__all__ = ["MANIFEST", "AlignOptions", "AlignSummary", "align_folder", "aligned_crops", "output_names"]
