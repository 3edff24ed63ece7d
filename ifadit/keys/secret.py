"""Secrets: 256-bit random keys, passphrase-derived keys, the key file format and fingerprints.

A :class:`SecretKey` never shows its bytes: ``repr``/``str``/``format`` give the fingerprint, pickling is
refused, and every error raised here names the file or the problem, never key material. The fingerprint
is a one-way, domain-separated hash and the only thing about a key that may be logged (on the user's own
machine: published files never carry it). Key and passphrase files that others may read are refused, as ssh
refuses such private keys; weak passphrases are refused (:mod:`ifadit.keys.passphrase`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ifadit.keys.passphrase import require_strong_passphrase

SECRET_BYTES = 32  # 256 bits
FILE_MAGIC = "ifadit-secret-key"
FILE_VERSION = 1
FINGERPRINT_HEX = 16
# scrypt cost of new keys: n=2**17, r=8 is 128 MiB and about 0.3-1 s per guess (RFC 7914's interactive
# 2**14 is too cheap for a key whose every guess can be checked offline against a published photo).
SCRYPT_DEFAULTS = {"n": 2**17, "r": 8, "p": 1}
# The cheapest cost accepted: keys made before the default was raised (n=2**15) must still be re-derivable.
SCRYPT_MIN_N = 2**15
SALT_BYTES = 16


class KeyFileError(ValueError):
    """A key file is missing, malformed, of an unknown version, or would overwrite an existing file."""


def _fingerprint(material: bytes) -> str:
    return hashlib.shake_256(b"ifadit/fingerprint/v1\x00" + material).hexdigest(FINGERPRINT_HEX // 2)


class SecretKey:
    """A secret the anonymization is keyed on. Immutable; compare with ``==`` (constant time)."""

    __slots__ = ("__material", "_kdf")

    def __init__(self, material: bytes, kdf: Mapping[str, Any] | None = None) -> None:
        if not isinstance(material, bytes | bytearray) or len(material) != SECRET_BYTES:
            raise ValueError(f"a secret key must be exactly {SECRET_BYTES} bytes")
        self.__material = bytes(material)
        self._kdf = dict(kdf) if kdf else {"name": "random"}

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def generate(cls) -> SecretKey:
        """A fresh 256-bit key from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def from_passphrase(
        cls,
        passphrase: str | bytes,
        salt: bytes | None = None,
        *,
        n: int | None = None,
        r: int | None = None,
        p: int | None = None,
        allow_weak: bool = False,
    ) -> SecretKey:
        """Derive a key with scrypt. Without ``salt`` a random one is drawn; it is kept in ``kdf`` so the
        same key can be derived again from the passphrase. A weak passphrase raises
        :class:`WeakPassphraseError` (one line, never the passphrase) unless ``allow_weak``. ``n`` below the
        default re-derives a key made with an older, cheaper cost (at least ``SCRYPT_MIN_N``)."""
        if passphrase is None or (isinstance(passphrase, str | bytes) and not passphrase):
            raise ValueError("the passphrase is empty")
        if not allow_weak:
            require_strong_passphrase(passphrase)
        if isinstance(passphrase, str):
            passphrase = passphrase.encode("utf-8")
        salt = secrets.token_bytes(SALT_BYTES) if salt is None else bytes(salt)
        if len(salt) < 8:
            raise ValueError("the salt must be at least 8 bytes")
        params = {
            "n": n or SCRYPT_DEFAULTS["n"],
            "r": r or SCRYPT_DEFAULTS["r"],
            "p": p or SCRYPT_DEFAULTS["p"],
        }
        if params["n"] < SCRYPT_MIN_N or params["n"] & (params["n"] - 1):
            raise ValueError(f"scrypt n must be a power of two of at least {SCRYPT_MIN_N}")
        maxmem = 128 * params["n"] * params["r"] * params["p"] + (1 << 20)
        material = hashlib.scrypt(passphrase, salt=salt, dklen=SECRET_BYTES, maxmem=maxmem, **params)
        return cls(material, kdf={"name": "scrypt", "salt": salt.hex(), **params})

    # -- what may be shown -------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """A short one-way hash; the only thing about a key that may reach a log."""
        return _fingerprint(self.__material)

    @property
    def kdf(self) -> dict[str, Any]:
        """How the key was made (``random`` or the scrypt parameters and salt); not secret."""
        return dict(self._kdf)

    def __repr__(self) -> str:
        return f"SecretKey(fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    # -- key material, for the key schemes and the sealed metadata only ---
    def derive(self, salt: bytes, info: bytes, length: int = 32) -> bytes:
        """A subkey for one purpose (HKDF-SHA256: ``info`` names the purpose, ``salt`` makes it per-use), so
        the secret itself never keys a cipher. The caller must treat the result like the secret."""
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(self.__material)

    def expand(self, context: bytes, n_bytes: int) -> bytes:
        """Stable, domain-separated expansion (SHAKE-256) of the key into ``n_bytes`` for one purpose."""
        return hashlib.shake_256(b"ifadit/expand/v1\x00" + context + b"\x00" + self.__material).digest(
            n_bytes
        )

    def with_bit_flipped(self, index: int) -> SecretKey:
        """The key one bit away (for the security metrics: a near-miss key must not recover the face)."""
        if not 0 <= index < 8 * SECRET_BYTES:
            raise ValueError(f"bit index must be in [0, {8 * SECRET_BYTES})")
        flipped = bytearray(self.__material)
        flipped[index // 8] ^= 1 << (index % 8)
        return SecretKey(bytes(flipped), kdf={"name": "derived"})

    # -- identity ------------------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKey):
            return NotImplemented
        return hmac.compare_digest(self.__material, other._SecretKey__material)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __copy__(self) -> SecretKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SecretKey:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a SecretKey cannot be pickled; save it with SecretKey.save(path)")

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__reduce__()

    # -- the key file ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a versioned text key file with mode 0600; never overwrites an existing file."""
        path = Path(path)
        lines = [
            "# ifadit secret key. Keep it private: whoever holds it can undo the anonymization.",
            f"{FILE_MAGIC} v{FILE_VERSION}",
            f"fingerprint: {self.fingerprint}",
            "kdf: " + " ".join(f"{k}={v}" for k, v in self._kdf.items()),
            "secret: " + base64.b64encode(self.__material).decode("ascii"),
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"refusing to overwrite existing file {path}") from None
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(path, 0o600)  # in case the umask widened it
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SecretKey:
        """Read a key file from :meth:`save`; each failure is one line naming the file, never its content."""
        path = Path(path)
        text = _read_private_text(path, "key file", "ascii")
        _refuse_if_shared(path, "key file")
        fields: dict[str, str] = {}
        header = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if header is None:
                header = line
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise KeyFileError(f"malformed key file {path}: a line is not 'name: value'")
            fields[name.strip()] = value.strip()
        if header is None or not header.startswith(FILE_MAGIC + " "):
            raise KeyFileError(f"{path} is not an ifadit key file (missing '{FILE_MAGIC}' header)")
        version = header[len(FILE_MAGIC) + 1 :]
        if version != f"v{FILE_VERSION}":
            raise KeyFileError(
                f"key file {path} has unsupported version {version[:10]!r}; expected v{FILE_VERSION}"
            )
        if "secret" not in fields:
            raise KeyFileError(f"malformed key file {path}: no 'secret' line")
        try:
            material = base64.b64decode(fields["secret"], validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"malformed key file {path}: the secret is not valid base64") from None
        if len(material) != SECRET_BYTES:
            raise KeyFileError(f"malformed key file {path}: the secret must be {SECRET_BYTES} bytes")
        kdf: dict[str, Any] = {}
        for item in fields.get("kdf", "name=random").split():
            k, _, v = item.partition("=")
            kdf[k] = int(v) if v.isdigit() else v
        key = cls(material, kdf=kdf)
        if "fingerprint" in fields and not hmac.compare_digest(fields["fingerprint"], key.fingerprint):
            raise KeyFileError(f"key file {path} is corrupt: its fingerprint does not match its secret")
        return key


def _read_private_text(path: Path, what: str, encoding: str) -> str:
    """A secret-bearing file's text; a failure names the file and the error type, never the content
    (a decode error's message would quote the offending bytes)."""
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise KeyFileError(f"{what} not found: {path}") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise KeyFileError(f"cannot read {what} {path}: {type(exc).__name__}") from None


def _refuse_if_shared(path: Path, what: str) -> None:
    """Refuse a secret-bearing file that others than its owner may read or write, as ssh refuses such a
    private key: whoever can read it can undo the anonymization (POSIX only)."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{what} {path} is accessible by others (mode {mode:04o}): run 'chmod 600 {path}'"
        )


def load_passphrase_file(path: str | os.PathLike[str]) -> str:
    """The first line of a passphrase file (trailing newline stripped); errors never echo the content. A
    file that others may read is refused, as a key file is."""
    path = Path(path)
    text = _read_private_text(path, "passphrase file", "utf-8")
    _refuse_if_shared(path, "passphrase file")
    passphrase = text.splitlines()[0] if text else ""
    if not passphrase:
        raise KeyFileError(f"passphrase file {path} is empty")
    return passphrase
