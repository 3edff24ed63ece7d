"""The command line: plugins, keygen and the flow demo, and its one-line errors."""

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ifadit.cli import main
from ifadit.keys import SecretKey

ROOT = Path(__file__).resolve().parents[1]


def test_plugins_lists_every_group(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for group in (
        "flows:",
        "key_schemes:",
        "identity_encoders:",
        "attribute_encoders:",
        "generators:",
        "recognizers:",
    ):
        assert group in out
    assert "glow" in out and "ifadit.flows.glow:GlowFlow" in out and "[ifadit]" in out


def test_keygen_writes_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "k.key"
    assert main(["keygen", str(path)]) == 0
    secret = SecretKey.load(path)
    out = capsys.readouterr().out
    assert secret.fingerprint in out
    assert base64.b64encode(secret._SecretKey__material).decode() not in out
    assert main(["keygen", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and err.count("\n") == 1
    assert SecretKey.load(path) == secret


def test_keygen_from_passphrase_file(tmp_path):
    (tmp_path / "pw").write_text("a long passphrase\n")
    args = ["keygen", "--passphrase-file", str(tmp_path / "pw"), "--salt", "00112233445566778899"]
    assert main([*args[:1], str(tmp_path / "a.key"), *args[1:]]) == 0
    assert main([*args[:1], str(tmp_path / "b.key"), *args[1:]]) == 0
    assert SecretKey.load(tmp_path / "a.key") == SecretKey.load(tmp_path / "b.key")


def test_demo_runs_and_recovers(tmp_path, capsys):
    key = SecretKey.generate()
    key.save(tmp_path / "k.key")
    config = tmp_path / "demo.yaml"
    config.write_text(
        "flow: {class_path: realnvp, init_args: {dim: 64, cond_dim: 32, num_blocks: 2}}\n"
        "key_scheme: {class_path: mapping, init_args: {dim: 32, num_layers: 2}}\n"
        "train: {steps: 40, batch_size: 32, lr: 3.0e-3}\n"
        "data: {train_identities: 128, test_identities: 64}\n"
    )
    assert (
        main(["demo", "--config", str(config), "--key", str(tmp_path / "k.key"), "--out", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "flow_demo.json").read_text())
    assert result["key_fingerprint"] == key.fingerprint and key.fingerprint in out
    assert result["roundtrip_max_abs_error"] < 1e-5
    assert result["cos_original_recovered"] > 0.99999
    # a wrong key does not recover: far from the exact recovery
    assert result["cos_original_wrong_key"] < 0.9
    assert result["cos_original_one_bit_key"] < 0.9
    assert base64.b64encode(key._SecretKey__material).decode() not in out + json.dumps(result)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: ["--key", str(d / "missing.key")], "key file not found"),
        (
            lambda d: (d / "bad.key").write_text("nonsense\n") and ["--key", str(d / "bad.key")],
            "not an ifadit key",
        ),
        (lambda d: [], "give --key"),
        (lambda d: ["--key", str(d / "k.key"), "--config", str(d / "nope.yaml")], "config file not found"),
    ],
)
def test_demo_bad_input_is_one_line(tmp_path, capsys, setup, expected):
    SecretKey.generate().save(tmp_path / "k.key")
    assert main(["demo", *setup(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_console_script_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "ifadit.cli", "plugins", "--group", "key_schemes"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "mapping" in out and "bits" in out
