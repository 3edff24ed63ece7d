"""Sealed metadata end to end: what a published photo (and its sidecar) carries in the clear is the format
header alone; two photos of one key share no other byte; a wrong key recovers nothing and says so in one
line; ``recover`` reports whether each face region is exactly as anonymized, re-encoded (with its PSNR) or
replaced, and recovers anyway."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from photo_samples import astronaut, grace_hopper
from PIL import Image

from ifadit.cli import main
from ifadit.keys import SecretKey
from ifadit.photos.align import paste_faces
from ifadit.photos.io import read_photo
from ifadit.photos.metadata import open_metadata
from ifadit.photos.seal import HKDF_INFO, WRONG_KEY, WrongKeyError, seal, unseal

CLEAR = {"format", "version", "salt", "nonce", "sealed"}


def _cli(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model):
    """One key; astronaut (PNG) and Grace Hopper (JPEG) anonymized with sidecars, the astronaut once more
    into a second folder, and the first folder recovered."""
    from contextlib import redirect_stderr, redirect_stdout

    root = tmp_path_factory.mktemp("sealed")
    (root / "in").mkdir()
    Image.fromarray(astronaut()).save(root / "in" / "astronaut.png")
    Image.fromarray(grace_hopper()).save(root / "in" / "grace.jpg", quality=95)
    key, wrong = root / "right.key", root / "wrong.key"
    SecretKey.generate().save(key)
    SecretKey.generate().save(wrong)
    model = ["--ckpt_path", str(tiny_model.checkpoint), "--no_progress"]
    err, out = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        assert (
            main(
                [
                    "anonymize",
                    str(root / "in"),
                    "--out",
                    str(root / "anon"),
                    "--sidecar",
                    "--key",
                    str(key),
                    *model,
                ]
            )
            == 0
        )
        again = root / "in" / "astronaut.png"
        assert main(["anonymize", str(again), "--out", str(root / "anon2"), "--key", str(key), *model]) == 0
        recovered = main(
            ["recover", str(root / "anon"), "--out", str(root / "rec"), "--key", str(key), *model]
        )
    # what the commands print may end up in a published log: it names no key either
    assert SecretKey.load(key).fingerprint not in out.getvalue() + err.getvalue()
    assert "recovered 2 face(s) in 2 of 2 photo(s)" in out.getvalue()
    return root, key, wrong, model, recovered, err.getvalue()


def _published(root: Path) -> list[Path]:
    return sorted(p for folder in ("anon", "anon2") for p in (root / folder).rglob("*") if p.is_file())


def test_published_files_carry_only_the_sealed_envelope(run) -> None:
    root, key, *_ = run
    secret = SecretKey.load(key)
    opened = open_metadata(read_photo(root / "anon" / "astronaut.png").metadata, secret)
    box = opened.record["faces"][0]["box"]
    leaks = {
        "key fingerprint": secret.fingerprint.encode(),
        "key fingerprint (raw)": bytes.fromhex(secret.fingerprint),
        "secret": base64.b64encode(secret._SecretKey__material),
        "model hash": opened.model_sha256.encode(),
        "face box": json.dumps(box[0]).encode(),
        "field names": b"landmarks",
    }
    files = _published(root)
    assert {p.name for p in files} == {
        "astronaut.png",
        "grace.jpg",
        "astronaut.png.ifadit.json",
        "grace.jpg.ifadit.json",
    }
    for path in files:
        raw = path.read_bytes()
        envelope = json.loads(raw) if path.suffix == ".json" else read_photo(path).metadata
        derived = secret.derive(base64.b64decode(envelope["salt"]), HKDF_INFO)  # the photo's own AES key
        for what, needle in {
            **leaks,
            "derived key": derived,
            "derived key (b64)": base64.b64encode(derived),
        }.items():
            assert needle not in raw, f"{what} in {path.name}"
        if path.suffix != ".json":
            assert set(read_photo(path).metadata) == CLEAR
        else:
            assert set(json.loads(raw)) == CLEAR


def _variable_bytes(envelope: dict) -> bytes:
    return b"".join(base64.b64decode(envelope[k]) for k in ("salt", "nonce", "sealed"))


def _shared_run(a: bytes, b: bytes, n: int) -> bool:
    grams = {a[i : i + n] for i in range(len(a) - n + 1)}
    return any(b[i : i + n] in grams for i in range(len(b) - n + 1))


def test_two_photos_of_one_key_share_no_metadata_bytes_beyond_the_header(run) -> None:
    root, *_ = run
    first = read_photo(root / "anon" / "astronaut.png").metadata
    same_photo_again = read_photo(root / "anon2" / "astronaut.png").metadata
    other_photo = read_photo(root / "anon" / "grace.jpg").metadata
    header = {"format": "ifadit-photo", "version": 2}
    for a, b in ((first, same_photo_again), (first, other_photo), (same_photo_again, other_photo)):
        assert {k: a[k] for k in header} == {k: b[k] for k in header} == header
        va, vb = _variable_bytes(a), _variable_bytes(b)
        assert len(va) > 500 and len(vb) > 500
        # no 5-byte run in common (about 1 in 10^6 by chance for random bytes of this length)
        assert not _shared_run(va, vb, 5)
        for field in ("salt", "nonce", "sealed"):
            assert not _shared_run(a[field].encode(), b[field].encode(), 8)


def test_a_wrong_key_writes_nothing_and_says_so_in_one_line(run, tmp_path, capsys) -> None:
    root, key, wrong, model, *_ = run
    source = root / "anon" / "grace.jpg"
    code, out, err = _cli(
        capsys, ["recover", str(source), "--out", str(tmp_path / "o"), "--key", str(wrong), *model]
    )
    assert code != 0
    assert err.splitlines() == [f"ifadit recover: error: {source}: {WRONG_KEY}"]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    for k in (key, wrong):
        assert SecretKey.load(k).fingerprint not in out + err


def test_the_sealed_record_is_authenticated(run) -> None:
    root, key, wrong, *_ = run
    secret = SecretKey.load(key)
    envelope = json.loads((root / "anon" / "astronaut.png.ifadit.json").read_text())
    assert open_metadata(envelope, secret).faces
    sealed = bytearray(base64.b64decode(envelope["sealed"]))
    sealed[len(sealed) // 2] ^= 1
    changed = {**envelope, "sealed": base64.b64encode(bytes(sealed)).decode()}
    for bad, secret_used in ((changed, secret), (envelope, SecretKey.load(wrong))):
        with pytest.raises(WrongKeyError) as info:
            open_metadata(bad, secret_used)
        assert str(info.value) == WRONG_KEY
    # the same record sealed twice: nothing in common but the header
    record = {"faces": [], "model_sha256": "0" * 64}
    a, b = seal(record, secret), seal(record, secret)
    assert a["salt"] != b["salt"] and unseal(a, secret) == unseal(b, secret) == record


def test_recovered_photos_are_sealed_and_report_their_faces_exact(run) -> None:
    root, key, _, _, code, err = run
    assert code == 0
    for name, count in (("astronaut.png", 1), ("grace.jpg", 1)):
        lines = [line for line in err.splitlines() if f"anon/{name}:" in line and "face" in line]
        expected = f"face regions exactly as anonymized ({count} of {count})"
        assert lines == [f"ifadit recover: note: {root / 'anon' / name}: {expected}"]
        photo = read_photo(root / "rec" / name)
        assert set(photo.metadata) == CLEAR
        assert open_metadata(photo.metadata, SecretKey.load(key)).record["operation"] == "recover"


def test_the_sealed_regions_cover_every_pixel_the_paste_changed(run, anonymizer) -> None:
    root, key, *_ = run
    original = read_photo(root / "in" / "astronaut.png").pixels
    opened = open_metadata(read_photo(root / "anon" / "astronaut.png").metadata, SecretKey.load(key))
    prepared = anonymizer.prepare(original, opened.faces)
    _, union = paste_faces(
        prepared.photo, torch.zeros_like(prepared.crops), prepared.masks, prepared.matrices
    )
    covered = np.zeros(original.shape[:2], bool)
    for region in opened.integrity:
        x0, y0, x1, y1 = region["box"]
        covered[y0:y1, x0:x1] = True
    pasted = (union[0] > 0).numpy()
    assert pasted.any() and not (pasted & ~covered).any()
    assert covered.sum() < 2 * pasted.sum()  # and not much more


def _true_psnr(a: np.ndarray, b: np.ndarray, box: list[int]) -> float:
    x0, y0, x1, y1 = box
    diff = a[y0:y1, x0:x1].astype(np.float64) - b[y0:y1, x0:x1]
    return 10 * math.log10(255**2 / np.mean(diff**2))


def test_recover_tells_a_re_encoded_face_from_a_painted_over_one_and_recovers_both(
    run, tmp_path, capsys
) -> None:
    root, key, _, model, *_ = run
    anonymized = read_photo(root / "anon" / "astronaut.png").pixels
    sidecar = root / "anon" / "astronaut.png.ifadit.json"
    region = open_metadata(json.loads(sidecar.read_text()), SecretKey.load(key)).integrity[0]["box"]
    (tmp_path / "in").mkdir()
    Image.fromarray(anonymized).save(tmp_path / "in" / "reencoded.jpg", quality=90)  # its metadata is lost
    painted = anonymized.copy()
    x0, y0, x1, y1 = region
    painted[(y0 + y1) // 2 - 20 : (y0 + y1) // 2 + 20, x0 + 10 : x1 - 10] = (205, 160, 130)  # a skin-tone bar
    Image.fromarray(painted).save(tmp_path / "in" / "painted.png")
    code, _, err = _cli(
        capsys,
        [
            "recover",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "rec"),
            "--metadata",
            str(sidecar),
            "--key",
            str(key),
            *model,
        ],
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["painted.png", "reencoded.jpg"]
    [reencoded] = [line for line in err.splitlines() if "reencoded.jpg:" in line and "JPEG" not in line]
    assert "face 1 of 1 re-encoded since anonymization (PSNR " in reencoded and "approximate" in reencoded
    estimated = float(reencoded.split("(PSNR ")[1].split(" dB")[0])
    true = _true_psnr(anonymized, read_photo(tmp_path / "in" / "reencoded.jpg").pixels, region)
    assert abs(estimated - true) < 2.0, (estimated, true)
    [painted_line] = [line for line in err.splitlines() if "painted.png:" in line]
    assert "face 1 of 1 replaced or painted over since anonymization" in painted_line
    assert "recovered anyway, but not the original face" in painted_line


def test_the_sealed_metadata_stays_small() -> None:
    """About 0.9 KB per face in the envelope: a JPEG's 64 KB EXIF holds the metadata of about 70 faces (more
    make ``anonymize`` ask for PNG or WebP, which have no such limit)."""
    from ifadit.photos.detect import Face
    from ifadit.photos.metadata import build_metadata, seal_metadata
    from ifadit.photos.seal import JPEG_MAX_TEXT

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    secret = SecretKey.generate()
    sizes = {}
    for count in (1, 20):
        faces, boxes = [], []
        for _ in range(count):
            x, y = rng.uniform(0, 700), rng.uniform(0, 500)
            marks = tuple((x + rng.uniform(0, 60), y + rng.uniform(0, 60)) for _ in range(5))
            faces.append(Face((x, y, x + 64.123, y + 80.456), marks, float(rng.uniform(0.9, 1))))
            boxes.append([int(x), int(y), int(x) + 90, int(y) + 100])
        record = build_metadata("anonymize", faces, "f" * 64, 256, (800, 600), boxes)
        envelope = seal_metadata(record, secret, pixels)
        assert open_metadata(envelope, secret).record["faces"] == [f.to_dict() for f in faces]
        sizes[count] = len(json.dumps(envelope))
    per_face = (sizes[20] - sizes[1]) / 19
    assert per_face < 1000 and JPEG_MAX_TEXT / per_face > 65, sizes
