"""No face left behind: every face of a large photo is found at the resolution it needs and anonymized (or
the photo fails, or the face is blurred), the paste mask covers the whole face even where the photo's edge
cuts it, and phone-sized photos are processed.

The truth comes from the detector run on each source photo at full resolution (``collage.py``), never from
the detection under test."""

from __future__ import annotations

import numpy as np
import pytest
from collage import collage, reference_faces
from photo_samples import astronaut, grace_hopper

from ifadit.api import compose_uint8
from ifadit.keys import SecretKey
from ifadit.photos.detect import FaceDetector
from ifadit.photos.io import PhotoError

SIZES = [30, 34, 38, 41, 50, 64, 80, 100, 128, 160, 200]  # face box sides in photo pixels


@pytest.fixture(scope="module")
def secret() -> SecretKey:
    return SecretKey(bytes(range(32)))


@pytest.fixture(scope="module")
def big_collage():
    # 6400 x 4800 as in a 31-megapixel photo; the faces straddle the detector's tile boundaries (x = 1400,
    # 2600; y = 1333): each tile must hand a face it cuts to the neighbour that holds it whole
    return collage(6400, 4800, SIZES, origin=(1000, 1100))


def _landmark_points(face) -> list[tuple[int, int]]:
    """Both eyes and both mouth corners (the nose lies between them)."""
    return [(round(x), round(y)) for x, y in face.landmarks[[0, 1, 3, 4]]]


def test_every_face_of_a_large_photo_is_anonymized(anonymizer, secret, big_collage) -> None:
    pixels = big_collage.pixels
    result = anonymizer.anonymize_photo(pixels, secret)
    out = compose_uint8(pixels, result)
    mask = result.paste_mask.numpy()
    assert len(result.faces) == len(SIZES) and not result.tiny
    for face in big_collage.faces:
        for x, y in _landmark_points(face):  # every eye and mouth corner lies under the paste mask
            assert mask[y, x] > 0.99, (face.size, x, y)
        x0, y0, x1, y1 = (round(v) for v in face.box)
        region = np.abs(out[y0:y1, x0:x1].astype(int) - pixels[y0:y1, x0:x1].astype(int))
        assert (region.max(axis=2) > 0).mean() > 0.8, face.size  # the face's region changed
    # and nothing else: the flat canvas away from the faces is returned bit for bit
    assert np.array_equal(out[3000:], pixels[3000:])


def test_min_face_size_is_in_photo_pixels() -> None:
    """A face under --min_face_size in the full-resolution photo is reported, whatever the photo's size (a
    3200 px photo: a downscaled copy of 1600 px would halve every face)."""
    sizes = [30, 38, 41, 50, 64]
    detection = FaceDetector(min_face_size=45).detect(collage(3200, 900, sizes, origin=(1300, 300)).pixels)
    small = sorted(round(f.size) for f in detection.tiny)
    assert len(small) == 3 and max(small) < 45  # the 30, 38 and 41 px faces
    assert sorted(round(f.size) for f in detection.faces) == pytest.approx([50, 64], abs=5)


def _cut_reference(pixels: np.ndarray):
    face = FaceDetector().detect(pixels).faces[0]
    lm = np.asarray(face.landmarks)
    return face, lm


@pytest.mark.parametrize("source", [astronaut, grace_hopper])
@pytest.mark.parametrize("edge", ["left", "right", "bottom"])
def test_a_face_cut_by_the_edge_is_covered(anonymizer, secret, source, edge) -> None:
    """Cut through the cheek or below the mouth, keeping both eyes and the mouth: they end under the mask."""
    pixels = source()
    face, lm = _cut_reference(pixels)
    eye_dist = np.linalg.norm(lm[1] - lm[0])
    if edge == "left":
        cut = int(lm[[0, 3], 0].min() - 0.3 * eye_dist)
        image, shift = pixels[:, cut:], np.array([cut, 0])
    elif edge == "right":
        cut = int(lm[[1, 4], 0].max() + 0.3 * eye_dist) + 1
        image, shift = pixels[:, :cut], np.array([0, 0])
    else:
        cut = int(lm[3:, 1].max() + 0.25 * eye_dist) + 1
        image, shift = pixels[:cut], np.array([0, 0])
    image = np.ascontiguousarray(image)
    x0, _, x1, y1 = face.box
    assert cut > 0 and (x0 < shift[0] or x1 > image.shape[1] or y1 > image.shape[0])  # the face is cut
    result = anonymizer.anonymize_photo(image, secret)
    mask = result.paste_mask.numpy()
    out = compose_uint8(image, result)
    for x, y in np.round(lm[[0, 1, 3, 4]] - shift).astype(int):
        assert mask[y, x] > 0.99, (edge, x, y)
        near = (slice(y - 2, y + 3), slice(x - 2, x + 3))
        assert np.abs(out[near].astype(int) - image[near]).max() > 0


def test_faces_too_small_fail_the_photo_or_are_blurred(anonymizer, secret) -> None:
    """A face the pipeline cannot anonymize is never left as it was: the photo fails, or (blur_tiny) the
    face is blurred."""
    from collage import place

    canvas = np.full((700, 900, 3), 118, dtype=np.uint8)
    (src_a, face_a), (src_b, face_b) = reference_faces()[0], reference_faces()[2]
    big = place(canvas, src_a, face_a, 80, (40, 40))
    tiny = place(canvas, src_b, face_b, 16, (600, 400))
    with pytest.raises(PhotoError, match=r"1 face\(s\) smaller than 24 px"):
        anonymizer.anonymize_photo(canvas, secret)
    anonymizer.blur_tiny = True
    try:
        result = anonymizer.anonymize_photo(canvas, secret)
    finally:
        anonymizer.blur_tiny = False
    assert len(result.faces) == 1 and len(result.blurred) == 1
    out = compose_uint8(canvas, result)
    x0, y0, x1, y1 = (round(v) for v in tiny.box)
    before, after = canvas[y0:y1, x0:x1].astype(float), out[y0:y1, x0:x1].astype(float)
    assert after.std(axis=(0, 1)).mean() < 0.6 * before.std(axis=(0, 1)).mean()  # its detail is gone
    assert result.paste_mask.numpy()[round(big.landmarks[0, 1]), round(big.landmarks[0, 0])] > 0.99


def test_a_phone_sized_photo_is_processed(tmp_path, tiny_model) -> None:
    """12000 x 9000 (108 megapixels, past Pillow's 89-megapixel warning), mostly one flat colour, through the
    command line: every face found at full resolution and anonymized."""
    from PIL import Image

    from ifadit.cli import main

    built = collage(12000, 9000, [36, 90, 240], origin=(10900, 8300))
    Image.fromarray(built.pixels).save(tmp_path / "phone.jpg", quality=90)
    key = tmp_path / "k.key"
    SecretKey.generate().save(key)
    argv = ["anonymize", str(tmp_path / "phone.jpg"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--model", str(tiny_model.checkpoint), "--key", str(key), "--no_progress"]) == 0
    before = np.asarray(Image.open(tmp_path / "phone.jpg"))
    after = np.asarray(Image.open(tmp_path / "out" / "phone.jpg"))
    assert after.shape == (9000, 12000, 3)
    for face in built.faces:
        for x, y in _landmark_points(face):
            near = (slice(y - 1, y + 2), slice(x - 1, x + 2))
            assert np.abs(after[near].astype(int) - before[near]).max() > 6, (face.size, x, y)
