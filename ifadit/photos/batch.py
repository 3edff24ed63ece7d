"""``ifadit anonymize`` / ``ifadit recover`` over many files: each photo read, its faces found (detected, or
from the metadata an anonymized photo carries), the faces of several photos run through the model together,
each result written atomically beside a summary. A photo that fails is reported in one line and skipped;
the others go on, and nothing of a failed photo is written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ifadit.keys import SecretKey
from ifadit.photos.detect import Face
from ifadit.photos.io import (
    LOSSY,
    SUFFIX_OF,
    Photo,
    PhotoError,
    encode_photo,
    pixels_sha256,
    read_photo,
    read_sidecar,
    sidecar_path,
    write_atomic,
)
from ifadit.photos.metadata import faces_from_metadata

if TYPE_CHECKING:
    import torch

    from ifadit.api import Anonymizer, PhotoResult, Prepared

# Faces per model call by device type, from benchmarks/batching.py (results in benchmarks/README.md,
# "Batching"): on the CPU a batch costs more per face than single faces do, so faces go one at a time.
DEFAULT_BATCH_SIZE = {"cpu": 1, "cuda": 16}


def default_batch_size(device: str | torch.device) -> int:
    """Faces per model call on ``device`` when none is given (``DEFAULT_BATCH_SIZE``; 8 elsewhere)."""
    kind = device if isinstance(device, str) else device.type
    return DEFAULT_BATCH_SIZE.get(kind.split(":")[0], 8)


@dataclass
class BatchOptions:
    operation: str  # "anonymize" or "recover"
    out_dir: Path
    file_format: str | None = None  # None: the input's
    overwrite: bool = False
    sidecar: bool = False  # also write <output>.ifadit.json
    metadata: Path | None = None  # recover: the metadata of every input (a sidecar), instead of its own
    detect: bool = False  # recover: detect the faces when a photo carries no metadata
    force: bool = False  # recover: go on when the key fingerprint or the model hash differ from the metadata
    progress: bool | None = None  # None: a progress bar when stderr is a terminal


@dataclass
class BatchSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    faces: int = 0
    notes: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class _Job:
    source: Path
    target: Path
    photo: Photo
    prepared: Prepared
    file_format: str


def _target_for(
    source: Path, relative: Path, options: BatchOptions, photo_format: str | None
) -> tuple[Path, str]:
    file_format = (options.file_format or photo_format or "PNG").upper()
    if file_format == "JPG":
        file_format = "JPEG"
    if file_format not in SUFFIX_OF:
        raise PhotoError(f"cannot write format {file_format} (png, jpeg or webp)")
    target = options.out_dir / relative
    if options.file_format is not None:
        target = target.with_suffix(SUFFIX_OF[file_format])
    return target, file_format


def _faces_for_recovery(
    anonymizer: Anonymizer,
    source: Path,
    photo: Photo,
    secret: SecretKey,
    options: BatchOptions,
    shared_metadata: dict[str, Any] | None,
    note: Callable[[str], None],
) -> list[Face] | None:
    """The faces recorded at anonymization (explicit metadata file, the photo's own, or its sidecar);
    None to detect them again (``--detect``)."""
    metadata = shared_metadata or photo.metadata
    if metadata is None and sidecar_path(source).is_file():
        metadata = read_sidecar(sidecar_path(source))
    if metadata is None:
        if options.detect:
            note("no ifadit metadata: faces detected again (recovery is better with the recorded ones)")
            return None
        raise PhotoError(
            "no ifadit metadata (not anonymized by ifadit, or re-saved without it): "
            "give --metadata FILE, or --detect to find the faces again"
        )
    try:
        faces = faces_from_metadata(metadata)
    except ValueError as exc:
        raise PhotoError(str(exc)) from None
    size = metadata.get("image_size")
    height, width = photo.pixels.shape[:2]
    if size and list(size) != [width, height]:
        raise PhotoError(f"the metadata is for a {size[0]}x{size[1]} photo, this one is {width}x{height}")
    recorded_key = metadata.get("key_fingerprint")
    if recorded_key and recorded_key != secret.fingerprint and not options.force:
        raise PhotoError(
            f"this photo was anonymized with key {recorded_key}, not with the given key "
            f"{secret.fingerprint}: a wrong key gives a wrong face (--force tries anyway)"
        )
    recorded_model = metadata.get("model_sha256")
    if recorded_model and anonymizer.model_sha256 and recorded_model != anonymizer.model_sha256:
        if not options.force:
            raise PhotoError(
                f"this photo was anonymized by model {recorded_model[:16]}, not by this one "
                f"({anonymizer.model_sha256[:16]}) (--force tries anyway)"
            )
        note("anonymized by another model: recovery will not match")
    recorded_pixels = metadata.get("pixels_sha256")
    if recorded_pixels and recorded_pixels != pixels_sha256(photo.pixels):
        note(
            "its pixels differ from those written at anonymization (re-encoded or edited): "
            "recovery is approximate"
        )
    return faces


def run_batch(
    anonymizer: Anonymizer,
    inputs: Sequence[tuple[Path, Path]],
    secret: SecretKey,
    options: BatchOptions,
    report: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Process ``inputs`` (file, path relative to ``out_dir``) and write every result. ``report`` gets one
    line per failure or note (stderr by default)."""
    from tqdm import tqdm

    say = report or (lambda line: print(line, file=sys.stderr))
    command = f"ifadit {options.operation}"
    summary = BatchSummary()
    protected = [source for source, _ in inputs]
    shared_metadata = read_sidecar(options.metadata) if options.metadata is not None else None
    if options.file_format and options.file_format.upper() in ("JPEG", "JPG"):
        say(f"{command}: note: JPEG is lossy: recovery from it is approximate (png and webp are lossless)")
    pending: list[_Job] = []

    def fail(source: Path, message: str) -> None:
        summary.failed.append((source, message))
        say(f"{command}: error: {source}: {message}")

    def flush() -> None:
        if not pending:
            return
        jobs = list(pending)
        pending.clear()
        try:
            results = anonymizer.process(options.operation, [job.prepared for job in jobs], secret)
        except (RuntimeError, ValueError) as exc:  # the model failed on this batch: its photos fail
            for job in jobs:
                fail(
                    job.source, f"model error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                )
            return
        for job, result in zip(jobs, results, strict=True):
            try:
                _write(job, result)
            except (PhotoError, OSError) as exc:
                fail(job.source, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def _write(job: _Job, result: PhotoResult) -> None:
        from ifadit.api import compose_uint8

        pixels = compose_uint8(job.photo.pixels, result)
        data, digest = encode_photo(
            pixels, job.file_format, result.metadata, job.photo.alpha, job.photo.grayscale
        )
        side = None
        if options.sidecar:
            text = json.dumps({**result.metadata, "pixels_sha256": digest}, indent=1) + "\n"
            side = write_atomic(sidecar_path(job.target), text.encode(), options.overwrite, protected)
        try:
            write_atomic(job.target, data, options.overwrite, protected)
        except BaseException:
            if side is not None:
                side.unlink(missing_ok=True)  # no sidecar without its photo
            raise
        summary.written.append(job.target)
        summary.faces += len(result.faces)

    # disable=None: tqdm shows the bar only when stderr is a terminal
    disable = None if options.progress is None else not options.progress
    bar = tqdm(inputs, desc=options.operation, unit="photo", file=sys.stderr, disable=disable)
    for source, relative in bar:
        notes: list[str] = []
        try:
            photo = read_photo(source)
            target, file_format = _target_for(source, relative, options, photo.format)
            if any(target.resolve() == p.resolve() for p in protected):
                raise PhotoError(f"refusing to write over an input: {target}")
            if target.exists() and not options.overwrite:
                raise PhotoError(f"refusing to overwrite existing {target} (--overwrite allows it)")
            faces = None
            if options.operation == "recover":
                faces = _faces_for_recovery(
                    anonymizer, source, photo, secret, options, shared_metadata, notes.append
                )
            prepared = anonymizer.prepare(photo.pixels, faces)
        except PhotoError as exc:
            fail(source, str(exc))
            continue
        for text in [*photo.notes, *notes]:
            summary.notes.append((source, text))
            say(f"{command}: note: {source}: {text}")
        if prepared.tiny:
            count = len(prepared.tiny)
            say(f"{command}: note: {source}: {count} face(s) under the minimum size left as they are")
        if file_format in LOSSY and options.file_format is None:
            say(f"{command}: note: {source}: written as JPEG (lossy): --format png is lossless")
        pending.append(_Job(source, target, photo, prepared, file_format))
        if sum(len(job.prepared.faces) for job in pending) >= anonymizer.batch_size:
            flush()
    flush()
    bar.close()
    return summary


__all__ = ["DEFAULT_BATCH_SIZE", "BatchOptions", "BatchSummary", "default_batch_size", "run_batch"]
