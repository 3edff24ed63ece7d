"""What an output file gives away besides its pixels, and how files are handled: camera, serial, GPS and the
embedded thumbnail of the original are dropped (``--keep_metadata`` writes only exposure settings back),
colour profiles are converted to sRGB, 16-bit images to 8 bits, recovered photos are private (0600), the
Python API reads EXIF orientation as the command line does, and a batch that cannot be written is refused
before any model work."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from exif_samples import MAKE, MODEL, SERIAL, camera_exif, display_p3_profile
from photo_samples import astronaut, grace_hopper
from PIL import ExifTags, Image, ImageCms

from ifadit.cli import main
from ifadit.keys import SecretKey
from ifadit.photos.io import read_photo

GPS, EXIF, IFD1 = ExifTags.IFD.GPSInfo, ExifTags.IFD.Exif, ExifTags.IFD.IFD1
XMP_SECRET = b"Jane Doe, 48.8582N 2.2945E"
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:creator>' + XMP_SECRET + b"</dc:creator></x:xmpmeta>"


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("key") / "k.key"
    SecretKey.generate().save(path)
    return path


def _camera_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(astronaut()).resize((96, 96)).save(buffer, "JPEG")
    Image.fromarray(astronaut()).save(path, quality=95, exif=camera_exif(buffer.getvalue()), xmp=XMP)
    with Image.open(path) as image:  # the input really carries what the output must not
        exif = image.getexif()
        assert exif.get_ifd(GPS) and exif.get_ifd(EXIF)[0xA431] == SERIAL and exif.get_ifd(IFD1)
        assert XMP_SECRET in image.info["xmp"]
    return path


def _anonymize(tmp_path: Path, tiny_model, key: Path, source: Path, *extra: str) -> Path:
    out = tmp_path / "out"
    argv = ["anonymize", str(source), "--out", str(out), "--model", str(tiny_model.checkpoint)]
    assert main([*argv, "--key", str(key), "--no_progress", *extra]) == 0
    return out / source.name


def test_camera_serial_gps_and_the_original_thumbnail_are_dropped(tmp_path, tiny_model, key) -> None:
    output = _anonymize(tmp_path, tiny_model, key, _camera_jpeg(tmp_path / "camera.jpg"))
    image = Image.open(output)
    exif = image.getexif()
    assert not exif.get_ifd(GPS) and not exif.get_ifd(IFD1) and not exif.get_ifd(EXIF)
    assert 0x10F not in exif and 0x110 not in exif
    assert not {"icc_profile", "xmp", "photoshop"} & set(image.info)
    raw = output.read_bytes()
    assert raw.count(b"\xff\xd8") == 1  # one JPEG in the file: no embedded thumbnail
    for secret_text in (SERIAL.encode(), MAKE.encode(), MODEL.encode(), XMP_SECRET):
        assert secret_text not in raw


def test_keep_metadata_writes_back_only_exposure_settings(tmp_path, tiny_model, key) -> None:
    output = _anonymize(tmp_path, tiny_model, key, _camera_jpeg(tmp_path / "camera.jpg"), "--keep-metadata")
    exif = Image.open(output).getexif()
    exposure = exif.get_ifd(EXIF)
    assert exposure[0x829A] == pytest.approx(1 / 250) and exposure[0x829D] == pytest.approx(2.8)
    assert 0xA431 not in exposure and not exif.get_ifd(GPS) and not exif.get_ifd(IFD1)
    assert SERIAL.encode() not in output.read_bytes()


def test_recovered_photos_and_sidecars_are_private(tmp_path, tiny_model, key) -> None:
    source = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(source)
    old = os.umask(0o022)
    try:
        anonymized = _anonymize(tmp_path, tiny_model, key, source, "--sidecar")
        back = tmp_path / "back"
        argv = ["recover", str(anonymized), "--out", str(back), "--model", str(tiny_model.checkpoint)]
        assert main([*argv, "--key", str(key), "--no_progress", "--sidecar"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(anonymized.stat().st_mode) == 0o644  # made to be published
    for path in (back / "astronaut.png", back / "astronaut.png.ifadit.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_the_api_honours_exif_orientation(anonymizer, tmp_path) -> None:
    upright = grace_hopper()  # 600 x 512 (H x W)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter to the left: "rotate 90 degrees clockwise to view"
    Image.fromarray(np.rot90(upright)).save(tmp_path / "turned.jpg", quality=95, exif=exif.tobytes())
    secret = SecretKey(bytes(range(32)))
    out = anonymizer.anonymize(Image.open(tmp_path / "turned.jpg"), secret)
    assert out.size == (512, 600)  # upright, as read_photo and the command line see it
    changed = np.abs(np.asarray(out, dtype=int) - np.asarray(read_photo(tmp_path / "turned.jpg").pixels))
    face = changed[118:339, 177:355].max(axis=2)  # Grace Hopper's face box, upright
    assert (face > 8).mean() > 0.5


def test_icc_profiles_are_converted_to_srgb(tmp_path) -> None:
    # saturated colours, where Display P3 and sRGB differ most, and the greys of a photo
    saturated = np.array([[[230, 20, 20], [20, 200, 40], [30, 40, 220], [240, 200, 20]]], dtype=np.uint8)
    pixels = np.concatenate([np.repeat(saturated, 16, axis=0).repeat(16, axis=1), astronaut()[:16, :64]])
    Image.fromarray(pixels).save(tmp_path / "p3.png", icc_profile=display_p3_profile())
    photo = read_photo(tmp_path / "p3.png")
    p3 = ImageCms.ImageCmsProfile(io.BytesIO(display_p3_profile()))
    expected = ImageCms.profileToProfile(Image.fromarray(pixels), p3, ImageCms.createProfile("sRGB"))
    np.testing.assert_array_equal(photo.pixels, np.asarray(expected))
    assert np.abs(photo.pixels.astype(int) - pixels).max() > 10  # P3 values read as sRGB would be off
    assert any("P3 D built-in" in note and "to sRGB" in note for note in photo.notes)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    Image.fromarray(pixels).save(tmp_path / "srgb.png", icc_profile=srgb.tobytes())
    np.testing.assert_array_equal(read_photo(tmp_path / "srgb.png").pixels, pixels)  # nothing to convert


def test_sixteen_bit_images_are_converted_with_a_note(tmp_path) -> None:
    levels = (np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    photo = read_photo(tmp_path / "deep.png")
    assert any("8 bits" in note for note in photo.notes)
    np.testing.assert_array_equal(photo.pixels[..., 0], np.round(levels / 257.0).astype(np.uint8))


def _refused(tmp_path: Path, key: Path, inputs: list[Path], out: Path, capsys, *extra: str) -> str:
    # the model does not exist: a refusal that names the outputs proves nothing was loaded first
    argv = ["anonymize", *map(str, inputs), "--out", str(out), "--model", str(tmp_path / "none.ckpt")]
    assert main([*argv, "--key", str(key), "--no_progress", *extra]) == 2
    return capsys.readouterr().err


def test_two_inputs_for_one_output_are_refused_up_front(tmp_path, key, capsys) -> None:
    first, second = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    for path in (first, second):
        path.parent.mkdir()
        Image.fromarray(astronaut()).save(path)
    out = tmp_path / "out"
    err = _refused(tmp_path, key, [first, second], out, capsys, "--overwrite")
    assert "would both be written to" in err and str(out / "x.png") in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
    jpeg = tmp_path / "a" / "x.jpg"  # another collision: one name once --format gives both one suffix
    Image.fromarray(astronaut()).save(jpeg)
    assert "would both be written" in _refused(tmp_path, key, [first, jpeg], out, capsys, "--format", "png")


def test_an_unwritable_output_is_refused_up_front(tmp_path, key, capsys) -> None:
    source = tmp_path / "x.png"
    Image.fromarray(astronaut()).save(source)
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should go")
    assert "is not a folder" in _refused(tmp_path, key, [source], blocker, capsys)
    assert "cannot write to the output folder" in _refused(tmp_path, key, [source], blocker / "sub", capsys)


def test_unsupported_files_in_folders_are_reported(tmp_path, key, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("anim.gif", "scan.tiff", "phone.heic"):
        (folder / name).write_bytes(b"not read")
    (folder / "notes.txt").write_text("not an image: not mentioned")
    Image.fromarray(astronaut()).save(folder / "x.png")
    err = _refused(tmp_path, key, [folder], tmp_path / "out", capsys)
    for name in ("anim.gif", "scan.tiff", "phone.heic"):
        assert f"{name}: not read (JPEG, PNG or WebP only)" in err
    assert "notes.txt" not in err


def test_option_spellings() -> None:
    """``--min-face-size`` and ``--keep-metadata`` as written with hyphens, and the old ``--skip_tiny``."""
    from ifadit.cli import build_parser, normalize_options

    argv = ["anonymize", "x.png", "--out", "o", "--model", "m", "--min-face-size", "30", "--keep-metadata"]
    args = build_parser().parse_args(normalize_options([*argv, "--skip_tiny"]))
    assert args.min_face_size == 30 and args.keep_metadata and args.blur_tiny
