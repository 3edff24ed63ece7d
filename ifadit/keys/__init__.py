"""Secrets and key schemes."""

from ifadit.keys.passphrase import WeakPassphraseError, passphrase_weakness, require_strong_passphrase
from ifadit.keys.schemes import BitsKeyScheme, KeyScheme, MappingKeyScheme
from ifadit.keys.secret import KeyFileError, SecretKey, load_passphrase_file

__all__ = [
    "BitsKeyScheme",
    "KeyFileError",
    "KeyScheme",
    "MappingKeyScheme",
    "SecretKey",
    "WeakPassphraseError",
    "load_passphrase_file",
    "passphrase_weakness",
    "require_strong_passphrase",
]
