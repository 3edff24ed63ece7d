"""Secrets: generation, passphrases, the key file, and that key material never shows."""

import base64
import copy
import logging
import os
import pickle
import stat

import pytest

from ifadit.keys import KeyFileError, SecretKey, load_passphrase_file
from ifadit.keys.secret import SCRYPT_DEFAULTS, SECRET_BYTES


def _forms(secret: SecretKey) -> list[str]:
    """Every way the key's bytes could leak as text."""
    raw = secret._SecretKey__material
    return [raw.hex(), base64.b64encode(raw).decode(), repr(raw)[2:-1]]


def test_generate_is_256_bit_and_random():
    a, b = SecretKey.generate(), SecretKey.generate()
    assert len(a._SecretKey__material) == SECRET_BYTES == 32
    assert a != b and a.fingerprint != b.fingerprint
    assert len(a.fingerprint) == 16 and int(a.fingerprint, 16) >= 0


def test_repr_str_format_show_only_the_fingerprint():
    secret = SecretKey.generate()
    old_style = "%s" % (secret,)  # noqa: UP031 - %-formatting must hide it too
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", old_style):
        assert secret.fingerprint in text
        for form in _forms(secret):
            assert form not in text


def test_pickling_is_refused_and_copies_are_the_same_object():
    secret = SecretKey.generate()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)
    assert copy.deepcopy(secret) is secret and copy.copy(secret) is secret


PHRASE = "correct horse battery staple"
OLD_N = 2**15  # the cost of keys made before the default was raised: the cheapest still accepted


def test_passphrase_kdf_is_scrypt_with_recorded_salt():
    a = SecretKey.from_passphrase(PHRASE, salt=b"ifadit-test-salt", n=OLD_N)
    b = SecretKey.from_passphrase(PHRASE, salt=b"ifadit-test-salt", n=OLD_N)
    other_salt = SecretKey.from_passphrase(PHRASE, salt=b"another-salt!!", n=OLD_N)
    other_phrase = SecretKey.from_passphrase(PHRASE + "r", salt=b"ifadit-test-salt", n=OLD_N)
    assert a == b
    assert a != other_salt and a != other_phrase
    assert a.kdf == {"name": "scrypt", "salt": b"ifadit-test-salt".hex(), "n": OLD_N, "r": 8, "p": 1}
    random_salt = SecretKey.from_passphrase("pw", n=OLD_N, allow_weak=True)
    assert len(bytes.fromhex(random_salt.kdf["salt"])) == 16


def test_passphrase_known_answers_new_default_and_old_cost():
    # New keys: scrypt(n=2**17, r=8, p=1), 128 MiB per guess; pinned so a change is noticed.
    assert SCRYPT_DEFAULTS == {"n": 2**17, "r": 8, "p": 1}
    secret = SecretKey.from_passphrase(PHRASE, salt=b"ifadit-test-salt")
    assert secret.kdf["n"] == 2**17 and secret.fingerprint == "3880c41301c6d927"
    # A key made with the old default (n=2**15) is still derived as it was.
    old = SecretKey.from_passphrase(PHRASE, salt=b"ifadit-test-salt", n=OLD_N)
    assert old.fingerprint == "fa865561b2b90fed" and old != secret


@pytest.mark.parametrize("n", [2**10, 2**14, 3 * 2**15])
def test_scrypt_cost_below_the_old_default_or_not_a_power_of_two_is_refused(n):
    with pytest.raises(ValueError, match="power of two of at least 32768"):
        SecretKey.from_passphrase(PHRASE, salt=b"ifadit-test-salt", n=n)


@pytest.mark.parametrize("bad", [b"", "", None])
def test_empty_passphrase_is_rejected(bad):
    with pytest.raises((ValueError, TypeError)):
        SecretKey.from_passphrase(bad)


def test_key_file_roundtrip_mode_and_no_overwrite(tmp_path):
    secret = SecretKey.from_passphrase(PHRASE, salt=b"saltsalt", n=OLD_N)
    path = secret.save(tmp_path / "k.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = SecretKey.load(path)
    assert loaded == secret and loaded.kdf == secret.kdf
    text = path.read_text()
    assert text.splitlines()[1] == "ifadit-secret-key v1"
    assert f"fingerprint: {secret.fingerprint}" in text
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        SecretKey.generate().save(path)
    assert SecretKey.load(path) == secret  # the existing file is untouched


def test_bit_flip_gives_a_different_key():
    secret = SecretKey.generate()
    assert secret.with_bit_flipped(0) != secret
    assert secret.with_bit_flipped(255).with_bit_flipped(255) == secret
    with pytest.raises(ValueError):
        secret.with_bit_flipped(256)


def _write(tmp_path, name, text):
    """A private file (mode 0600), as key and passphrase files must be."""
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_bad_key_files_give_one_line_errors_without_key_material(tmp_path):
    secret = SecretKey.generate()
    good = secret.save(tmp_path / "good.key").read_text()
    b64 = base64.b64encode(secret._SecretKey__material).decode()
    cases = {
        "missing": (tmp_path / "nope.key", "not found"),
        "not a key": (_write(tmp_path, "a.txt", "hello world\n"), "not an ifadit key file"),
        "version": (_write(tmp_path, "v.key", good.replace("v1", "v9")), "unsupported version"),
        "no secret": (_write(tmp_path, "n.key", "ifadit-secret-key v1\nkdf: name=random\n"), "no 'secret'"),
        "bad base64": (_write(tmp_path, "b.key", good.replace(b64, b64[:-4] + "!!!!")), "not valid base64"),
        "short": (
            _write(tmp_path, "s.key", good.replace(b64, base64.b64encode(b"x" * 16).decode())),
            "32 bytes",
        ),
        "fingerprint": (_write(tmp_path, "f.key", good.replace(secret.fingerprint, "0" * 16)), "corrupt"),
        "binary": (tmp_path / "bin.key", "cannot read"),
        "directory": (tmp_path, "cannot read"),
    }
    (tmp_path / "bin.key").write_bytes(b"\xff\xfe\x00" * 10)
    (tmp_path / "bin.key").chmod(0o600)
    for name, (path, expected) in cases.items():
        with pytest.raises(KeyFileError) as info:
            SecretKey.load(path)
        message = str(info.value)
        assert expected in message, name
        assert "\n" not in message, name
        for form in _forms(secret):
            assert form not in message, name


def test_passphrase_file(tmp_path):
    path = _write(tmp_path, "pw.txt", "my pass phrase\nignored\n")
    assert load_passphrase_file(path) == "my pass phrase"
    with pytest.raises(KeyFileError, match="empty"):
        load_passphrase_file(_write(tmp_path, "empty.txt", ""))
    with pytest.raises(KeyFileError, match="not found"):
        load_passphrase_file(tmp_path / "missing.txt")


def test_secret_never_reaches_logs(caplog):
    secret = SecretKey.generate()
    logger = logging.getLogger("ifadit.test")
    with caplog.at_level(logging.DEBUG):
        logger.info("using key %s", secret)
        logger.info("key repr %r", secret)
        logger.info(f"key {secret}")
    assert secret.fingerprint in caplog.text
    for form in _forms(secret):
        assert form not in caplog.text


def test_constructor_validates_length():
    with pytest.raises(ValueError, match="32 bytes"):
        SecretKey(b"short")
