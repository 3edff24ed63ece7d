"""Photo files: EXIF orientation, colour modes, metadata in PNG / JPEG / WebP, atomic never-clobbering writes,
and one-line errors for files that are not usable photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from photo_samples import astronaut
from PIL import Image

from ifadit.photos.io import (
    PhotoError,
    collect_inputs,
    encode_photo,
    pixels_sha256,
    read_photo,
    write_atomic,
)

ORIENTATION = 0x0112


def _gradient(height: int = 40, width: int = 60) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)


def test_exif_orientation_is_applied(tmp_path) -> None:
    pixels = _gradient()
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to view"
    Image.fromarray(pixels).save(tmp_path / "rotated.png", exif=exif.tobytes())
    photo = read_photo(tmp_path / "rotated.png")
    assert photo.pixels.shape == (60, 40, 3)
    np.testing.assert_array_equal(photo.pixels, np.rot90(pixels, k=-1))
    assert any("orientation 6" in note for note in photo.notes)


@pytest.mark.parametrize(
    ("mode", "grayscale", "has_alpha"),
    [
        ("L", True, False),
        ("LA", True, True),
        ("RGBA", False, True),
        ("CMYK", False, False),
        ("P", False, False),
    ],
)
def test_colour_modes_become_rgb_and_remember_how_to_write_back(tmp_path, mode, grayscale, has_alpha) -> None:
    image = Image.fromarray(_gradient()).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path)
    photo = read_photo(path)
    assert photo.pixels.dtype == np.uint8 and photo.pixels.shape == (40, 60, 3)
    assert photo.grayscale is grayscale and (photo.alpha is not None) is has_alpha
    assert photo.mode == mode and photo.notes


@pytest.mark.parametrize("file_format", ["PNG", "JPEG", "WEBP"])
def test_metadata_round_trips_in_every_format(tmp_path, file_format) -> None:
    pixels = astronaut()[100:228, 150:278]
    metadata = {"format": "ifadit-photo", "version": 1, "faces": [{"box": [1, 2, 3, 4]}]}
    data, digest = encode_photo(pixels, file_format, metadata)
    path = tmp_path / f"out.{file_format.lower()}"
    write_atomic(path, data)
    photo = read_photo(path)
    assert photo.metadata is not None and photo.metadata["faces"] == metadata["faces"]
    assert photo.metadata["pixels_sha256"] == digest == pixels_sha256(photo.pixels)
    if file_format != "JPEG":  # PNG and WebP outputs are lossless
        np.testing.assert_array_equal(photo.pixels, pixels)


def test_atomic_write_never_clobbers_and_leaves_no_temporary_file(tmp_path) -> None:
    target = tmp_path / "a.png"
    write_atomic(target, b"first")
    with pytest.raises(PhotoError, match="refusing to overwrite"):
        write_atomic(target, b"second")
    assert target.read_bytes() == b"first"
    source = tmp_path / "input.png"
    source.write_bytes(b"input")
    with pytest.raises(PhotoError, match="over an input"):
        write_atomic(source, b"x", overwrite=True, protected=[source])
    write_atomic(target, b"third", overwrite=True)
    assert target.read_bytes() == b"third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "input.png"]


def test_inputs_are_collected_recursively(tmp_path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.PNG", "d/sub/b.jpeg", "d/sub/c.webp", "d/notes.txt", "d/.hidden.png"):
        (tmp_path / name).write_bytes(b"")
    found = collect_inputs([tmp_path / "d", tmp_path / "single.jpg"])
    assert [str(rel) for _, rel in found] == ["a.PNG", "sub/b.jpeg", "sub/c.webp", "single.jpg"]


def _truncated_png(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(astronaut()).save(buffer, "PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buffer.getvalue()[:4000])
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "file not found"),
        (lambda d: (d / "text.jpg").write_text("not a photo") and d / "text.jpg", "not an image"),
        (_truncated_png, "corrupt or truncated"),
        (
            lambda d: Image.fromarray(_gradient()).save(d / "x.bmp") or d / "x.bmp",
            "unsupported image format BMP",
        ),
        (
            lambda d: (
                Image.fromarray(_gradient()).save(
                    d / "x.gif", save_all=True, append_images=[Image.fromarray(_gradient()[::-1])]
                )
                or d / "x.gif"
            ),
            "unsupported image format GIF",
        ),
    ],
)
def test_unusable_files_fail_with_one_line(tmp_path, make, message) -> None:
    with pytest.raises(PhotoError, match=message) as info:
        read_photo(make(tmp_path))
    assert "\n" not in str(info.value)


def test_decompression_bombs_are_refused(tmp_path, monkeypatch) -> None:
    Image.fromarray(_gradient(200, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 40,000 px is "too large" now
    with pytest.raises(PhotoError, match="too large"):
        read_photo(tmp_path / "big.png")
