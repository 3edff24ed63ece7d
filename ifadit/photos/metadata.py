"""The metadata an anonymized (or recovered) photo carries, so ``recover`` finds its faces without detecting
them again and can tell whether they were changed since.

Since version 2 it is **sealed** (:mod:`ifadit.photos.seal`): the record below is encrypted and
authenticated under a key derived from the secret, and only the format, version, salt and nonce are in the
clear. No key fingerprint is written anywhere; the sealed tag itself tells a wrong key. The record holds what
the photo was made with (operation, ifadit version, model hash and resolution), the photo size, every face's
box and landmarks, and the tamper record of the pixels as written (:mod:`ifadit.photos.integrity`): the
photo's digest and, per face region, a digest and a sketch. Version 1 (plain JSON with the key's
fingerprint) is still read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ifadit.keys import SecretKey
from ifadit.photos.detect import Face
from ifadit.photos.integrity import seal_regions
from ifadit.photos.io import PhotoError, pixels_sha256
from ifadit.photos.seal import FORMAT, SEALED_VERSION, WRONG_KEY, WrongKeyError, is_sealed, seal, unseal

METADATA_FORMAT = FORMAT
METADATA_VERSION = SEALED_VERSION
PLAIN_VERSION = 1  # the unsealed format of ifadit 0.1: read, never written


def build_metadata(
    operation: str,
    faces: Sequence[Face],
    model_sha256: str | None,
    resolution: int,
    image_size: tuple[int, int] | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """The record to seal into an output (it stays on this machine until :func:`seal_metadata`).
    ``image_size``: (width, height) of the photo; ``regions``: per face, the box [x0, y0, x1, y1) its paste
    can change (:func:`ifadit.photos.integrity.face_boxes`)."""
    from ifadit import __version__

    return {
        "operation": operation,
        "ifadit_version": __version__,
        "model_sha256": model_sha256,
        "model_resolution": resolution,
        "image_size": list(image_size) if image_size is not None else None,
        "faces": [face.to_dict() for face in faces],
        "regions": [[int(v) for v in box] for box in regions] if regions is not None else None,
    }


def seal_metadata(record: Mapping[str, Any], secret: SecretKey, written: np.ndarray) -> dict[str, Any]:
    """The envelope to embed in an output: ``record`` plus the tamper record of ``written`` (the RGB uint8
    pixels a reader of the output decodes), sealed under ``secret``."""
    sealed = {key: value for key, value in record.items() if key != "regions"}
    sealed["pixels_sha256"] = pixels_sha256(written)
    sealed["integrity"] = seal_regions(written, record.get("regions") or [])
    return seal(sealed, secret)


@dataclass
class OpenedMetadata:
    """A photo's metadata, opened with the right key: ``record`` as written; ``integrity`` the sealed
    per-face tamper records (empty for version 1, which has only ``pixels_sha256``)."""

    version: int
    record: dict[str, Any]
    faces: list[Face]
    integrity: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model_sha256(self) -> str | None:
        return self.record.get("model_sha256")

    @property
    def image_size(self) -> list[int] | None:
        return self.record.get("image_size")

    @property
    def pixels_sha256(self) -> str | None:
        return self.record.get("pixels_sha256")


def open_metadata(metadata: Mapping[str, Any], secret: SecretKey) -> OpenedMetadata:
    """Open a photo's (or sidecar's) metadata with ``secret``: :class:`WrongKeyError` ("this key did not
    anonymize this photo") when another key made it, :class:`PhotoError` (one line) when it is not ours."""
    if metadata.get("format") != METADATA_FORMAT:
        raise PhotoError("the metadata is not ifadit photo metadata")
    if is_sealed(metadata):
        record = unseal(metadata, secret)
        integrity = record.get("integrity") or []
        if not isinstance(integrity, list) or len(integrity) not in (0, len(record.get("faces") or [])):
            raise PhotoError("malformed sealed metadata: one tamper record per face expected")
        return OpenedMetadata(SEALED_VERSION, record, faces_from_metadata(record), integrity)
    if metadata.get("version") == PLAIN_VERSION:
        recorded = metadata.get("key_fingerprint")
        if recorded and recorded != secret.fingerprint:
            raise WrongKeyError(WRONG_KEY)
        return OpenedMetadata(PLAIN_VERSION, dict(metadata), faces_from_metadata(metadata))
    raise PhotoError(f"unsupported ifadit metadata version {str(metadata.get('version'))[:10]!r}")


def faces_from_metadata(record: Mapping[str, Any]) -> list[Face]:
    """The faces of an opened record (or of version-1 metadata); ValueError (one line) for anything else."""
    if is_sealed(record):
        raise ValueError("the metadata is sealed: open it with the key (open_metadata)")
    faces = record.get("faces")
    if not isinstance(faces, list):
        raise ValueError("the metadata has no face list")
    try:
        return [Face.from_dict(face) for face in faces]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"malformed face in the metadata: {exc}") from None


__all__ = [
    "METADATA_FORMAT",
    "METADATA_VERSION",
    "PLAIN_VERSION",
    "OpenedMetadata",
    "WrongKeyError",
    "build_metadata",
    "faces_from_metadata",
    "open_metadata",
    "seal_metadata",
]
