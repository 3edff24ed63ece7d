"""Sealed photo metadata: what ``recover`` needs travels encrypted and authenticated under the key.

A published photo must not link to other photos of the same key nor help guess the key, yet ``recover`` needs
the faces, the model hash and the tamper record. So the record is sealed with AES-256-GCM (``cryptography``)
under a key derived from the secret by HKDF-SHA256 with a fresh random salt per photo; only the format,
version, salt and nonce stay in the clear. Two photos of one key share no bytes beyond that header, a wrong
key fails the authentication tag (:class:`WrongKeyError`), and any change to the sealed bytes fails it too.
The record is JSON, deflated before it is sealed (about 0.9 KB per face in the envelope), so a JPEG's 64 KB
EXIF holds the metadata of about 70 faces; PNG and WebP have no such limit.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import zlib
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ifadit.keys import SecretKey
from ifadit.photos.io import PhotoError

FORMAT = "ifadit-photo"
SEALED_VERSION = 2
SALT_BYTES = 16
NONCE_BYTES = 12
# HKDF's "info": names what the derived key is for, so it can never key anything else
HKDF_INFO = b"ifadit/photo-metadata/v2/aes-256-gcm"
WRONG_KEY = "this key did not anonymize this photo"
CLEAR_FIELDS = ("format", "version", "salt", "nonce", "sealed")
MAX_RECORD_BYTES = 16 << 20  # what a sealed record may inflate to
JPEG_MAX_TEXT = 65_000  # a JPEG's EXIF segment holds at most 64 KB


class WrongKeyError(PhotoError):
    """The sealed metadata does not open with this key (or was altered): nothing can be recovered with it."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, length: int | None = None) -> bytes:
    try:
        data = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise PhotoError(f"malformed sealed metadata: its {what} is not base64") from None
    if length is not None and len(data) != length:
        raise PhotoError(f"malformed sealed metadata: its {what} must be {length} bytes")
    return data


def _associated_data(version: int) -> bytes:
    """The clear header the tag also covers: a sealed record cannot be passed off under another version."""
    return f"{FORMAT}/v{version}".encode("ascii")


def is_sealed(metadata: Mapping[str, Any]) -> bool:
    return metadata.get("format") == FORMAT and metadata.get("version") == SEALED_VERSION


def seal(record: Mapping[str, Any], secret: SecretKey) -> dict[str, Any]:
    """``record`` (JSON-serialisable) sealed under ``secret``: the envelope to embed (clear header first)."""
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    plaintext = zlib.compress(json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii"), 9)
    cipher = AESGCM(secret.derive(salt, HKDF_INFO))
    sealed = cipher.encrypt(nonce, plaintext, _associated_data(SEALED_VERSION))
    return {
        "format": FORMAT,
        "version": SEALED_VERSION,
        "salt": _b64(salt),
        "nonce": _b64(nonce),
        "sealed": _b64(sealed),
    }


def unseal(envelope: Mapping[str, Any], secret: SecretKey) -> dict[str, Any]:
    """The record :func:`seal` sealed; :class:`WrongKeyError` when ``secret`` did not seal it (or the sealed
    bytes were changed), :class:`PhotoError` (one line) for an envelope that is not one."""
    if not is_sealed(envelope):
        raise PhotoError("the metadata is not sealed ifadit photo metadata")
    extra = sorted(set(envelope) - set(CLEAR_FIELDS))
    if extra:
        raise PhotoError(f"malformed sealed metadata: unexpected field {extra[0][:20]!r}")
    salt = _unb64(envelope.get("salt"), "salt", SALT_BYTES)
    nonce = _unb64(envelope.get("nonce"), "nonce", NONCE_BYTES)
    sealed = _unb64(envelope.get("sealed"), "sealed record")
    cipher = AESGCM(secret.derive(salt, HKDF_INFO))
    try:
        plaintext = cipher.decrypt(nonce, sealed, _associated_data(SEALED_VERSION))
    except InvalidTag:
        raise WrongKeyError(WRONG_KEY) from None
    inflater = zlib.decompressobj()
    try:  # authenticated: written by ifadit with this key; bounded all the same
        text = inflater.decompress(plaintext, MAX_RECORD_BYTES)
        record = json.loads(text) if not inflater.unconsumed_tail else None
    except (zlib.error, ValueError):
        record = None
    if not isinstance(record, dict):
        raise PhotoError("malformed sealed metadata: the record is not a JSON object")
    return record


__all__ = [
    "FORMAT",
    "JPEG_MAX_TEXT",
    "SEALED_VERSION",
    "WRONG_KEY",
    "WrongKeyError",
    "is_sealed",
    "seal",
    "unseal",
]
