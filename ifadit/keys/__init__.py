"""Secrets and key schemes."""

from ifadit.keys.schemes import BitsKeyScheme, KeyScheme, MappingKeyScheme
from ifadit.keys.secret import KeyFileError, SecretKey, load_passphrase_file

__all__ = [
    "BitsKeyScheme",
    "KeyFileError",
    "KeyScheme",
    "MappingKeyScheme",
    "SecretKey",
    "load_passphrase_file",
]
