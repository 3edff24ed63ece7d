"""Key and passphrase hardening: files others may read are refused (as ssh refuses such private keys), weak
passphrases are refused with one line that never holds them, new keys cost scrypt n=2**17 while key files
and passphrase keys made before still work, and subkeys come from HKDF."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import pytest

from ifadit.cli import main
from ifadit.keys import (
    KeyFileError,
    SecretKey,
    WeakPassphraseError,
    load_passphrase_file,
    passphrase_weakness,
)

DATA = Path(__file__).parent / "data"
# written by ifadit 0.1 (scrypt n=2**15) from "correct horse battery staple", salt b"ifadit-test-salt"
OLD_KEY_FILE = DATA / "passphrase-n32768.key"
STRONG = "violet meadow quantum lantern"


def _private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


# -- files that others may read -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_may_read_is_refused_with_one_line(tmp_path, mode) -> None:
    secret = SecretKey.generate()
    path = secret.save(tmp_path / "k.key")
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        SecretKey.load(path)
    message = str(info.value)
    assert "\n" not in message and "accessible by others" in message and f"{mode:04o}" in message
    assert f"chmod 600 {path}" in message
    assert base64.b64encode(secret._SecretKey__material).decode() not in message
    path.chmod(0o600)
    assert SecretKey.load(path) == secret
    path.chmod(0o400)  # read-only for the owner is private too
    assert SecretKey.load(path) == secret


def test_a_passphrase_file_others_may_read_is_refused(tmp_path) -> None:
    path = tmp_path / "pw.txt"
    path.write_text(STRONG + "\n")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="accessible by others") as info:
        load_passphrase_file(path)
    assert STRONG not in str(info.value)
    path.chmod(0o600)
    assert load_passphrase_file(path) == STRONG


def test_the_command_line_refuses_a_shared_key_file_before_any_photo(tmp_path, capsys) -> None:
    path = SecretKey.generate().save(tmp_path / "k.key")
    path.chmod(0o644)
    args = ["anonymize", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "x", "--key", str(path)]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "accessible by others" in err
    assert not (tmp_path / "o").exists()


# -- weak passphrases -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("passphrase", "reason"),
    [
        ("sunshine", "fewer than 12"),
        ("sunshine", "top-100 common password"),
        ("Tr0ub4dor&3", "fewer than 12"),
        ("password1234", "zxcvbn score"),
        ("aaaaaaaaaaaaaaaa", "zxcvbn score"),
        ("qwertyuiopasdfgh", "zxcvbn score"),
    ],
)
def test_a_weak_passphrase_is_refused_with_a_one_line_reason(passphrase, reason) -> None:
    with pytest.raises(WeakPassphraseError) as info:
        SecretKey.from_passphrase(passphrase, salt=b"ifadit-test-salt")
    message = str(info.value)
    assert reason in message and "--allow-weak-passphrase" in message and "\n" not in message
    assert passphrase not in message


def test_strong_passphrases_pass_and_weak_ones_can_be_allowed() -> None:
    for passphrase in (STRONG, "correct horse battery staple", "q8#Lm2!vX9pz-Rt4"):
        assert passphrase_weakness(passphrase) is None, passphrase
    weak = SecretKey.from_passphrase("sunshine", salt=b"ifadit-test-salt", n=2**15, allow_weak=True)
    assert weak.kdf["n"] == 2**15


def test_keygen_refuses_a_weak_passphrase_with_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    pw = _private(tmp_path / "pw", "sunshine\n")
    args = ["keygen", str(tmp_path / "a.key"), "--passphrase_file", str(pw), "--salt", "00112233445566778899"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weak passphrase" in err and "sunshine" not in err
    assert not (tmp_path / "a.key").exists()
    assert main([*args, "--allow-weak-passphrase"]) == 0
    assert SecretKey.load(tmp_path / "a.key").kdf["n"] == 2**17
    capsys.readouterr()


def test_recover_with_a_weak_passphrase_needs_the_override_too(tmp_path, capsys) -> None:
    pw = _private(tmp_path / "pw", "sunshine\n")
    args = ["recover", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "x",
            "--passphrase_file", str(pw), "--salt", "0011223344556677"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weak passphrase" in err and "sunshine" not in err


# -- the scrypt cost, and keys made before it was raised --------------------------------------------------


def test_new_passphrase_keys_cost_scrypt_n_2_17_and_keep_their_salt(tmp_path) -> None:
    start = time.perf_counter()
    secret = SecretKey.from_passphrase(STRONG)
    seconds = time.perf_counter() - start
    assert secret.kdf["n"] == 2**17 and secret.kdf["r"] == 8 and secret.kdf["p"] == 1
    salt = bytes.fromhex(secret.kdf["salt"])
    again = SecretKey.from_passphrase(STRONG, salt=salt)
    assert again == secret
    print(f"scrypt n=2**17 r=8 p=1: {seconds:.2f} s")  # shown with -s; no timed assert


def test_an_old_key_file_still_loads(tmp_path) -> None:
    path = shutil.copy(OLD_KEY_FILE, tmp_path / "old.key")  # git keeps no 0600: restore it as a user would
    Path(path).chmod(0o600)
    key = SecretKey.load(path)
    assert key.fingerprint == "fa865561b2b90fed"
    assert key.kdf == {"name": "scrypt", "salt": b"ifadit-test-salt".hex(), "n": 2**15, "r": 8, "p": 1}
    # and the passphrase still gives it, with the cost the key file records
    rederived = SecretKey.from_passphrase(
        "correct horse battery staple", salt=b"ifadit-test-salt", n=key.kdf["n"]
    )
    assert rederived == key


def test_an_old_passphrase_key_is_rederived_on_the_command_line_with_its_cost(tmp_path, capsys) -> None:
    """``--scrypt_n 32768`` derives a key made before the default was raised (here: keygen's key file)."""
    pw = _private(tmp_path / "pw", "correct horse battery staple\n")
    salt = b"ifadit-test-salt".hex()
    from ifadit.cli import _read_secret, build_parser

    old = _read_secret(build_parser().parse_args(
        ["recover", "x", "--out", "o", "--model", "m", "--passphrase_file", str(pw), "--salt", salt,
         "--scrypt_n", "32768"]
    ))
    assert old.fingerprint == "fa865561b2b90fed"


# -- subkeys ----------------------------------------------------------------------------------------------


def test_derive_is_hkdf_sha256_of_the_secret() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    material = bytes(range(32))
    secret = SecretKey(material)
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"s" * 16, info=b"purpose").derive(material)
    assert secret.derive(b"s" * 16, b"purpose") == expected
    assert secret.derive(b"t" * 16, b"purpose") != expected
    assert secret.derive(b"s" * 16, b"other") != expected
