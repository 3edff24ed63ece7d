"""``ifadit anonymize`` / ``ifadit recover`` end to end on real photos, and every bad input they reject with
its one-line message: the rest of the batch goes on, the exit status says a photo failed, nothing is half
written.

One batch over a folder of good and bad photos runs once (``batch_run``); each bad input has its own test
reading that run's lines and outputs.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from photo_samples import astronaut, grace_hopper, tiled
from PIL import Image
from skimage import data

from ifadit.cli import main
from ifadit.keys import SecretKey
from ifadit.photos.align import paste_faces
from ifadit.photos.io import read_photo
from ifadit.photos.metadata import open_metadata


@dataclass
class Run:
    code: int
    out: str
    err: str

    def lines_about(self, name: str) -> list[str]:
        return [line for line in self.err.splitlines() if f"/{name}:" in line]


def _run(capsys: pytest.CaptureFixture | None, argv: list[str]) -> Run:
    code = main(argv)
    captured = capsys.readouterr() if capsys is not None else None
    return Run(code, captured.out if captured else "", captured.err if captured else "")


def _write(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    paths = {"right": folder / "right.key", "wrong": folder / "wrong.key"}
    for path in paths.values():
        SecretKey.generate().save(path)
    (folder / "malformed.key").write_text("ifadit-secret-key v1\nsecret: not base64!!\n")
    (folder / "malformed.key").chmod(0o600)  # private, as key files must be: the content is what is wrong
    paths["malformed"] = folder / "malformed.key"
    paths["missing"] = folder / "missing.key"
    return paths


def _opened(photo, keys, key: str = "right"):
    """A photo's metadata opened with a key (it is sealed: nothing of it is readable without)."""
    return open_metadata(photo.metadata, SecretKey.load(keys[key]))


def _model_args(tiny_model, keys, key: str = "right") -> list[str]:
    return ["--ckpt_path", str(tiny_model.checkpoint), "--key", str(keys[key]), "--no_progress"]


# -- end to end ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, tiny_model, keys):
    """anonymize a folder (PNG, JPEG, WebP in a sub-folder: 1 + 1 + 4 faces), then recover the outputs."""
    root = tmp_path_factory.mktemp("good")
    _write(root / "in" / "astronaut.png", astronaut())
    _write(root / "in" / "grace.jpg", grace_hopper(), quality=95)
    _write(root / "in" / "sub" / "tiled.webp", tiled(), lossless=True)
    anonymized = _run(
        None,
        [
            "anonymize",
            str(root / "in"),
            "--out",
            str(root / "anon"),
            "--sidecar",
            *_model_args(tiny_model, keys),
        ],
    )
    recovered = _run(
        None, ["recover", str(root / "anon"), "--out", str(root / "rec"), *_model_args(tiny_model, keys)]
    )
    return root, anonymized, recovered


def test_anonymize_writes_every_photo_with_every_face_and_its_metadata(good_run, keys) -> None:
    root, anonymized, _ = good_run
    assert anonymized.code == 0
    secret = SecretKey.load(keys["right"])
    expected = {"astronaut.png": ("PNG", 1), "grace.jpg": ("JPEG", 1), "sub/tiled.webp": ("WEBP", 4)}
    for name, (file_format, faces) in expected.items():
        photo = read_photo(root / "anon" / name)
        assert photo.format == file_format
        assert set(photo.metadata) == {"format", "version", "salt", "nonce", "sealed"}
        meta = _opened(photo, keys).record
        assert meta["operation"] == "anonymize" and len(meta["faces"]) == faces
        assert "key_fingerprint" not in meta and len(meta["model_sha256"]) == 64
        assert meta["ifadit_version"] and meta["model_resolution"] == 64
        sidecar = json.loads((root / "anon" / (name + ".ifadit.json")).read_text())
        assert sidecar == photo.metadata  # the same sealed envelope
        raw = (root / "anon" / name).read_bytes()
        assert base64.b64encode(secret._SecretKey__material) not in raw
        assert secret.fingerprint.encode() not in raw
    assert not [p for p in (root / "anon").rglob("*") if p.name.startswith(".")]  # no temporary files


@pytest.mark.parametrize("name", ["astronaut.png", "sub/tiled.webp"])
def test_pixels_outside_the_paste_mask_are_unchanged(good_run, anonymizer, keys, name) -> None:
    root, _, _ = good_run
    original = read_photo(root / "in" / name).pixels
    output = read_photo(root / "anon" / name)
    faces = _opened(output, keys).faces
    prepared = anonymizer.prepare(original, faces)  # the masks the command pasted with
    _, union = paste_faces(
        prepared.photo, torch.zeros_like(prepared.crops), prepared.masks, prepared.matrices
    )
    changed = np.any(output.pixels != original, axis=-1)
    outside = (union[0] == 0).numpy()
    assert not changed[outside].any()
    assert changed[~outside].mean() > 0.5


def test_recover_uses_the_recorded_faces_and_writes_every_photo(good_run, keys) -> None:
    root, _, recovered = good_run
    assert recovered.code == 0
    for name, faces in (("astronaut.png", 1), ("grace.jpg", 1), ("sub/tiled.webp", 4)):
        photo = read_photo(root / "rec" / name)
        meta = _opened(photo, keys).record
        assert meta["operation"] == "recover" and len(meta["faces"]) == faces
        assert photo.pixels.shape == read_photo(root / "in" / name).pixels.shape


def test_recovery_after_jpeg_recompression_works_and_says_it_is_approximate(
    good_run, tiny_model, keys, tmp_path, capsys
) -> None:
    root, _, _ = good_run
    anonymized = read_photo(root / "anon" / "astronaut.png")
    _write(tmp_path / "recompressed.jpg", anonymized.pixels, quality=80)  # metadata lost on the way
    run = _run(
        capsys,
        [
            "recover",
            str(tmp_path / "recompressed.jpg"),
            "--out",
            str(tmp_path / "rec"),
            "--metadata",
            str(root / "anon" / "astronaut.png.ifadit.json"),
            *_model_args(tiny_model, keys),
        ],
    )
    assert run.code == 0
    assert "re-encoded since anonymization (PSNR" in run.err and "approximate" in run.err
    from_jpeg = read_photo(tmp_path / "rec" / "recompressed.jpg").pixels
    from_png = read_photo(root / "rec" / "astronaut.png").pixels
    face = np.any(from_png != anonymized.pixels, axis=-1)
    assert face.sum() > 1000
    # the loss, in the face region: JPEG noise through the model (reported in benchmarks/README.md for a
    # trained checkpoint); here only that it is a recovery of the same faces, not of something else
    diff = (from_jpeg[face].astype(float) - from_png[face]) / 255
    psnr = -10 * np.log10(np.mean(diff**2))
    assert psnr > 12, psnr


def test_a_wrong_key_is_refused_with_one_line_even_when_forced(
    good_run, tiny_model, keys, tmp_path, capsys
) -> None:
    root, _, _ = good_run
    source = root / "anon" / "astronaut.png"
    for out, extra in ((tmp_path / "a", []), (tmp_path / "b", ["--force"])):
        run = _run(
            capsys,
            ["recover", str(source), "--out", str(out), *extra, *_model_args(tiny_model, keys, "wrong")],
        )
        assert run.code == 1
        line = f"ifadit recover: error: {source}: this key did not anonymize this photo"
        assert run.err.splitlines() == [line]
        assert SecretKey.load(keys["right"]).fingerprint not in run.err + run.out
        assert SecretKey.load(keys["wrong"]).fingerprint not in run.err + run.out
        assert not out.exists() or not list(out.iterdir())


def test_metadata_of_another_photo_is_refused(good_run, tiny_model, keys, tmp_path, capsys) -> None:
    root, _, _ = good_run
    run = _run(
        capsys,
        [
            "recover",
            str(root / "anon" / "grace.jpg"),
            "--out",
            str(tmp_path / "o"),
            "--metadata",
            str(root / "anon" / "astronaut.png.ifadit.json"),
            *_model_args(tiny_model, keys),
        ],
    )
    assert run.code == 1
    assert "the metadata is for a 512x512 photo, this one is 512x600" in run.lines_about("grace.jpg")[0]


@pytest.mark.parametrize(
    ("key", "message"), [("missing", "key file not found"), ("malformed", "malformed key file")]
)
def test_a_missing_or_malformed_key_file_stops_before_any_photo(
    good_run, tiny_model, keys, tmp_path, capsys, key, message
) -> None:
    root, _, _ = good_run
    run = _run(
        capsys,
        ["anonymize", str(root / "in"), "--out", str(tmp_path / "o"), *_model_args(tiny_model, keys, key)],
    )
    assert run.code == 2
    assert run.err.count("\n") == 1 and message in run.err and run.err.startswith("ifadit anonymize: error:")
    assert not (tmp_path / "o").exists()


def test_a_missing_model_is_one_line(good_run, keys, tmp_path, capsys) -> None:
    root, _, _ = good_run
    run = _run(
        capsys,
        [
            "anonymize",
            str(root / "in"),
            "--out",
            str(tmp_path / "o"),
            "--key",
            str(keys["right"]),
            "--ckpt_path",
            str(tmp_path / "nope.ckpt"),
        ],
    )
    assert run.code == 2 and run.err.count("\n") == 1 and "checkpoint file not found" in run.err


def test_inputs_are_never_overwritten(good_run, tiny_model, keys, capsys) -> None:
    root, _, _ = good_run
    source = root / "in" / "astronaut.png"
    before = source.read_bytes()
    run = _run(
        capsys,
        ["anonymize", str(source), "--out", str(root / "in"), "--overwrite", *_model_args(tiny_model, keys)],
    )
    assert run.code == 1 and "refusing to write over an input" in run.err
    assert source.read_bytes() == before
    again = _run(
        capsys, ["anonymize", str(source), "--out", str(root / "anon"), *_model_args(tiny_model, keys)]
    )
    assert again.code == 1 and "refusing to overwrite existing" in again.err


# -- bad inputs in one batch -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory, tiny_model, keys):
    """One folder, good photos first, last and between the bad ones; stdout and stderr captured."""
    import contextlib

    root = tmp_path_factory.mktemp("bad")
    folder = root / "in"
    _write(folder / "a_astronaut.png", astronaut())
    buffer = io.BytesIO()
    Image.fromarray(astronaut()).save(buffer, "PNG")
    (folder / "b_corrupt.png").write_bytes(buffer.getvalue()[:5000])
    (folder / "c_not_an_image.jpg").write_text("this is text, not a photo\n")
    _write(folder / "d_no_face.png", data.coffee())
    _write(folder / "e_tiny.png", np.asarray(Image.fromarray(astronaut()).resize((100, 100), Image.BILINEAR)))
    _write(folder / "f_grayscale.png", np.asarray(Image.fromarray(grace_hopper()).convert("L")))
    Image.fromarray(astronaut()).convert("CMYK").save(folder / "g_cmyk.jpg", quality=95)
    rgba = np.concatenate([astronaut(), np.full((512, 512, 1), 200, np.uint8)], axis=-1)
    rgba[:40, :40, 3] = 0
    _write(folder / "h_alpha.png", rgba)
    _write(
        folder / "i_huge.png", np.asarray(Image.fromarray(astronaut()).resize((1536, 1536), Image.BILINEAR))
    )
    _write(folder / "z_grace.png", grace_hopper())
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            [
                "anonymize",
                str(folder),
                "--out",
                str(root / "out"),
                "--detect_max_side",
                "512",
                *_model_args(tiny_model, keys),
            ]
        )
    return root, Run(code, out.getvalue(), err.getvalue())


def _only_line(run: Run, name: str) -> str:
    lines = run.lines_about(name)
    assert len(lines) == 1, lines
    return lines[0]


def test_batch_goes_on_past_bad_photos_and_exits_non_zero(batch_run) -> None:
    root, run = batch_run
    assert run.code == 1
    written = sorted(p.name for p in (root / "out").iterdir())
    assert written == [
        "a_astronaut.png",
        "f_grayscale.png",
        "g_cmyk.jpg",
        "h_alpha.png",
        "i_huge.png",
        "z_grace.png",
    ]
    assert "in 6 of 10 photo(s)" in run.out and "4 failed" in run.out
    assert all(line.startswith("ifadit anonymize: ") for line in run.err.splitlines())


def test_corrupt_file(batch_run) -> None:
    assert "error" in _only_line(batch_run[1], "b_corrupt.png")
    assert "corrupt or truncated image" in _only_line(batch_run[1], "b_corrupt.png")


def test_not_an_image(batch_run) -> None:
    assert "error: " in _only_line(batch_run[1], "c_not_an_image.jpg")
    assert "not an image" in _only_line(batch_run[1], "c_not_an_image.jpg")


def test_no_face(batch_run) -> None:
    assert "no face found" in _only_line(batch_run[1], "d_no_face.png")


def test_tiny_faces(batch_run) -> None:
    line = _only_line(batch_run[1], "e_tiny.png")
    assert "smaller than 24 px" in line and "nothing written" in line


def test_grayscale_is_processed_and_written_back_grayscale(batch_run) -> None:
    root, run = batch_run
    assert "grayscale" in _only_line(run, "f_grayscale.png")
    with Image.open(root / "out" / "f_grayscale.png") as image:
        assert image.mode == "L"


def test_cmyk_is_converted(batch_run) -> None:
    root, run = batch_run
    assert "CMYK converted to RGB" in " ".join(run.lines_about("g_cmyk.jpg"))
    with Image.open(root / "out" / "g_cmyk.jpg") as image:
        assert image.mode == "RGB"


def test_alpha_is_kept(batch_run) -> None:
    root, run = batch_run
    assert "alpha channel kept" in _only_line(run, "h_alpha.png")
    with Image.open(root / "out" / "h_alpha.png") as image:
        alpha = np.asarray(image.getchannel("A"))
    assert image.mode == "RGBA" and alpha[:40, :40].max() == 0 and alpha[100:, 100:].min() == 200


def test_huge_image_is_processed_at_full_resolution(batch_run, anonymizer, keys) -> None:
    root, run = batch_run
    assert not run.lines_about("i_huge.png")
    photo = read_photo(root / "out" / "i_huge.png")
    faces = _opened(photo, keys).record["faces"]
    assert photo.pixels.shape == (1536, 1536, 3) and len(faces) == 1
    box = faces[0]["box"]
    assert 450 < box[0] < 650 and box[2] - box[0] > 220  # 3x the astronaut's face, found on a 512 px copy


def test_nothing_of_a_failed_photo_is_written(batch_run) -> None:
    root, _ = batch_run
    names = [p.name for p in (root / "out").rglob("*")]
    assert not [n for n in names if n.startswith(("b_", "c_", "d_", "e_")) or n.startswith(".")]


def test_anonymized_and_written_photos_are_consistent(batch_run, keys) -> None:
    """The good photos around the bad ones were anonymized like any other."""
    root, _ = batch_run
    for name in ("a_astronaut.png", "z_grace.png"):
        original = read_photo(root / "in" / name).pixels
        output = read_photo(root / "out" / name)
        assert len(_opened(output, keys).faces) == 1
        assert np.any(output.pixels != original)
