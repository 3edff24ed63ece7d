"""``ifadit anonymize`` / ``ifadit recover`` over many files: each photo read, its faces found (detected, or
from the sealed metadata an anonymized photo carries), the faces of several photos run through the model
together, each result written atomically with its metadata sealed under the key. A photo that fails is
reported in one line and skipped; the others go on, and nothing of a failed photo is written. ``recover``
opens the metadata with the key (a wrong key fails the photo: "this key did not anonymize this photo") and
reports whether each face region is exactly as anonymized, re-encoded (with its PSNR) or replaced.
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
from ifadit.photos.integrity import FaceCheck, check_regions, describe
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
from ifadit.photos.metadata import OpenedMetadata, open_metadata, seal_metadata
from ifadit.photos.seal import JPEG_MAX_TEXT

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
    force: bool = False  # recover: go on when the model hash differs from the metadata (never a wrong key)
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    keep_metadata: bool = False  # anonymize: write the input's exposure tags (io.KEPT_EXIF_TAGS) back


@dataclass
class BatchSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    faces: int = 0
    notes: list[tuple[Path, str]] = field(default_factory=list)
    integrity: dict[Path, list[FaceCheck]] = field(default_factory=dict)  # recover: each face region's state

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
) -> tuple[list[Face] | None, list[FaceCheck] | None]:
    """The faces recorded at anonymization (explicit metadata file, the photo's own, or its sidecar), opened
    with the key, and each face region's state since (None without a sealed tamper record); no faces to
    detect them again (``--detect``)."""
    metadata = shared_metadata or photo.metadata
    if metadata is None and sidecar_path(source).is_file():
        metadata = read_sidecar(sidecar_path(source))
    if metadata is None:
        if options.detect:
            note("no ifadit metadata: faces detected again (recovery is better with the recorded ones)")
            return None, None
        raise PhotoError(
            "no ifadit metadata (not anonymized by ifadit, or re-saved without it): "
            "give --metadata FILE, or --detect to find the faces again"
        )
    try:
        opened = open_metadata(metadata, secret)  # WrongKeyError: one line, no key material
    except ValueError as exc:
        raise PhotoError(str(exc).splitlines()[0]) from None
    size = opened.image_size
    height, width = photo.pixels.shape[:2]
    if size and list(size) != [width, height]:
        raise PhotoError(f"the metadata is for a {size[0]}x{size[1]} photo, this one is {width}x{height}")
    recorded_model = opened.model_sha256
    if recorded_model and anonymizer.model_sha256 and recorded_model != anonymizer.model_sha256:
        if not options.force:
            raise PhotoError(
                f"this photo was anonymized by model {recorded_model[:16]}, not by this one "
                f"({anonymizer.model_sha256[:16]}) (--force tries anyway)"
            )
        note("anonymized by another model: recovery will not match")
    return opened.faces, _integrity(opened, photo, note)


def _integrity(opened: OpenedMetadata, photo: Photo, note: Callable[[str], None]) -> list[FaceCheck] | None:
    """Report whether the photo is as it was written: per face region from the sealed tamper record, or
    (older metadata) from the whole photo's digest."""
    if opened.integrity:
        try:
            checks = check_regions(photo.pixels, opened.integrity)
        except (KeyError, TypeError, ValueError) as exc:
            raise PhotoError(f"malformed tamper record in the metadata: {exc}") from None
        line = describe(checks)
        if all(c.status == "exact" for c in checks) and opened.pixels_sha256 not in (
            None, pixels_sha256(photo.pixels)
        ):
            line += "; pixels outside them changed"
        note(line)
        return checks
    if opened.pixels_sha256 and opened.pixels_sha256 != pixels_sha256(photo.pixels):
        note(
            "its pixels differ from those written at anonymization (re-encoded or edited; this older "
            "metadata cannot tell which): recovery is approximate"
        )
    return None


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
        sealed: dict[str, Any] = {}

        def seal_written(written: Any) -> dict[str, Any]:  # the tamper record of the pixels as written
            sealed.update(seal_metadata(result.metadata, secret, written))
            if job.file_format == "JPEG" and len(json.dumps(sealed)) > JPEG_MAX_TEXT:
                raise PhotoError(
                    f"the metadata of {len(result.faces)} faces does not fit a JPEG's 64 KB EXIF: "
                    "write PNG or WebP (--format png)"
                )
            return sealed

        kept = job.photo.kept_exif if options.keep_metadata and options.operation == "anonymize" else None
        data, _ = encode_photo(
            pixels, job.file_format, seal_written, job.photo.alpha, job.photo.grayscale, kept_exif=kept
        )
        mode = 0o600 if options.operation == "recover" else 0o644  # a recovered face is private
        side = None
        if options.sidecar:  # the same sealed envelope: nothing in it is readable without the key
            text = json.dumps(sealed, indent=1) + "\n"
            side = write_atomic(sidecar_path(job.target), text.encode(), options.overwrite, protected, mode)
        try:
            write_atomic(job.target, data, options.overwrite, protected, mode)
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
                faces, checks = _faces_for_recovery(
                    anonymizer, source, photo, secret, options, shared_metadata, notes.append
                )
                if checks is not None:
                    summary.integrity[source] = checks
            prepared = anonymizer.prepare(photo.pixels, faces)
        except PhotoError as exc:
            fail(source, str(exc))
            continue
        for text in [*photo.notes, *notes]:
            summary.notes.append((source, text))
            say(f"{command}: note: {source}: {text}")
        if prepared.blur and options.operation == "anonymize":
            tiny, unsure = len(prepared.tiny), len(prepared.blur) - len(prepared.tiny)
            say(
                f"{command}: note: {source}: blurred {tiny} face(s) under the minimum size and "
                f"{unsure} region(s) the detector is unsure about"
            )
        if file_format in LOSSY and options.file_format is None:
            say(f"{command}: note: {source}: written as JPEG (lossy): --format png is lossless")
        pending.append(_Job(source, target, photo, prepared, file_format))
        if sum(len(job.prepared.faces) for job in pending) >= anonymizer.batch_size:
            flush()
    flush()
    bar.close()
    return summary


def check_targets(inputs: Sequence[tuple[Path, Path]], options: BatchOptions) -> None:
    """Refuse, before any model work, a batch whose outputs cannot all be written: two inputs that would
    be written to one output name (with or without ``--overwrite``, the second would replace the first),
    and an output folder that cannot be created or written to. PhotoError, one line."""
    seen: dict[Path, Path] = {}
    for source, relative in inputs:
        target = options.out_dir / relative
        if options.file_format is not None:
            file_format = options.file_format.upper().replace("JPG", "JPEG")
            target = target.with_suffix(SUFFIX_OF.get(file_format, target.suffix))
        if target in seen:
            raise PhotoError(f"{seen[target]} and {source} would both be written to {target}; nothing done")
        seen[target] = source
    check_writable(options.out_dir)


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and write a test file there: an unusable output folder fails at once,
    not after the model has run."""
    import os
    import tempfile

    if out_dir.exists() and not out_dir.is_dir():
        raise PhotoError(f"the output {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".ifadit-write-test.", dir=out_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise PhotoError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}") from None


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "BatchOptions",
    "BatchSummary",
    "check_targets",
    "check_writable",
    "default_batch_size",
    "run_batch",
]
