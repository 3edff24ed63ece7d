"""The metadata an anonymized (or recovered) photo carries, so ``recover`` finds its faces without detecting
them again: model hash, key fingerprint (never the key), every face's box and landmarks, ifadit's version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ifadit.photos.detect import Face

METADATA_FORMAT = "ifadit-photo"
METADATA_VERSION = 1


def build_metadata(
    operation: str,
    faces: Sequence[Face],
    model_sha256: str | None,
    key_fingerprint: str,
    resolution: int,
    image_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """``image_size``: (width, height) of the photo the faces belong to."""
    from ifadit import __version__

    return {
        "format": METADATA_FORMAT,
        "version": METADATA_VERSION,
        "operation": operation,
        "ifadit_version": __version__,
        "model_sha256": model_sha256,
        "model_resolution": resolution,
        "key_fingerprint": key_fingerprint,
        "image_size": list(image_size) if image_size is not None else None,
        "faces": [face.to_dict() for face in faces],
    }


def faces_from_metadata(metadata: dict[str, Any]) -> list[Face]:
    """The faces recorded by :func:`build_metadata`; ValueError (one line) for anything else."""
    if metadata.get("format") != METADATA_FORMAT:
        raise ValueError("the metadata is not ifadit photo metadata")
    if metadata.get("version") != METADATA_VERSION:
        raise ValueError(f"unsupported ifadit metadata version {str(metadata.get('version'))[:10]!r}")
    faces = metadata.get("faces")
    if not isinstance(faces, list):
        raise ValueError("the metadata has no face list")
    try:
        return [Face.from_dict(face) for face in faces]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"malformed face in the metadata: {exc}") from None


__all__ = ["METADATA_FORMAT", "METADATA_VERSION", "build_metadata", "faces_from_metadata"]
