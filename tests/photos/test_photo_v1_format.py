"""Photos written before the metadata was sealed (format version 1: plain JSON with the key's fingerprint)
still recover with their key, and a wrong key is still refused in one line.

``data/v1_astronaut.png`` and its sidecar were written by ``ifadit anonymize --sidecar`` of ifadit 0.1
(a 192 px astronaut, the key ``SecretKey(bytes(range(32)))``, the tiny photo model). The one field tied to
that checkpoint is the model hash: the tests train their tiny model afresh, so it is set to theirs, in the
layout ifadit 0.1 wrote (a PNG ``iTXt`` chunk ``ifadit`` holding compact JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from ifadit.cli import main
from ifadit.keys import SecretKey
from ifadit.photos.io import read_photo
from ifadit.photos.metadata import open_metadata
from ifadit.photos.seal import WRONG_KEY

DATA = Path(__file__).parent / "data"
FIXTURE_KEY = SecretKey(bytes(range(32)))


def _v1_photo(path: Path, model_sha256: str, pixels: np.ndarray | None = None) -> dict:
    """The fixture photo as ifadit 0.1 wrote it, with ``model_sha256`` (and optionally other pixels)."""
    with Image.open(DATA / "v1_astronaut.png") as image:
        metadata = json.loads(image.info["ifadit"])
        original = np.asarray(image.convert("RGB")).copy()
    metadata["model_sha256"] = model_sha256
    info = PngImagePlugin.PngInfo()
    info.add_itxt("ifadit", json.dumps(metadata, separators=(",", ":"), ensure_ascii=True))
    Image.fromarray(original if pixels is None else pixels).save(path, "PNG", pnginfo=info)
    return metadata


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("v1keys")
    paths = {"right": folder / "fixture.key", "wrong": folder / "wrong.key"}
    FIXTURE_KEY.save(paths["right"])
    SecretKey.generate().save(paths["wrong"])
    return paths


def test_the_fixture_is_in_the_old_format() -> None:
    with Image.open(DATA / "v1_astronaut.png") as image:
        metadata = json.loads(image.info["ifadit"])
    assert metadata["format"] == "ifadit-photo" and metadata["version"] == 1
    assert metadata["key_fingerprint"] == FIXTURE_KEY.fingerprint and len(metadata["faces"]) == 1
    sidecar = json.loads((DATA / "v1_astronaut.png.ifadit.json").read_text())
    assert sidecar == metadata


def test_a_photo_in_the_old_format_still_recovers(tiny_model, anonymizer, keys, tmp_path, capsys) -> None:
    source = tmp_path / "old.png"
    metadata = _v1_photo(source, anonymizer.model_sha256)
    model = ["--ckpt_path", str(tiny_model.checkpoint), "--no_progress"]
    code = main(["recover", str(source), "--out", str(tmp_path / "rec"), "--key", str(keys["right"]), *model])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 face(s) in 1 of 1 photo(s)" in captured.out and "error" not in captured.err
    recovered = read_photo(tmp_path / "rec" / "old.png")
    opened = open_metadata(recovered.metadata, FIXTURE_KEY)  # written in the sealed format
    assert (
        opened.version == 2 and opened.record["faces"] == metadata["faces"]
    )  # the recorded faces, not detected
    assert np.any(recovered.pixels != read_photo(source).pixels)

    code = main(["recover", str(source), "--out", str(tmp_path / "w"), "--key", str(keys["wrong"]), *model])
    err = capsys.readouterr().err
    assert code == 1 and err.splitlines() == [f"ifadit recover: error: {source}: {WRONG_KEY}"]
    assert FIXTURE_KEY.fingerprint not in err
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())  # nothing written


def test_an_old_sidecar_still_recovers_a_re_encoded_copy(
    tiny_model, anonymizer, keys, tmp_path, capsys
) -> None:
    metadata = _v1_photo(tmp_path / "old.png", anonymizer.model_sha256)
    sidecar = tmp_path / "old.png.ifadit.json"
    sidecar.write_text(json.dumps(metadata, indent=1))
    Image.open(tmp_path / "old.png").convert("RGB").save(tmp_path / "copy.jpg", quality=85)
    code = main(
        [
            "recover",
            str(tmp_path / "copy.jpg"),
            "--out",
            str(tmp_path / "rec"),
            "--metadata",
            str(sidecar),
            "--key",
            str(keys["right"]),
            "--ckpt_path",
            str(tiny_model.checkpoint),
            "--no_progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "rec" / "copy.jpg").is_file()
    assert "its pixels differ from those written at anonymization" in err and "approximate" in err
