"""``ifadit.Anonymizer``: built from a checkpoint alone (``ifadit fit`` stores the model config in it), every
face of real photos processed, pixels outside the paste mask returned bit for bit, PIL / numpy / tensor in and
out, recovery from the recorded faces, the face-parsing hook, and recovery being exactly the model's own
recovery of the re-aligned face pasted back."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from photo_samples import RECIPE, astronaut, grace_hopper, tiled
from PIL import Image

import ifadit
from ifadit.api import compose_uint8
from ifadit.keys import SecretKey
from ifadit.lightning_cli import MODEL_CONFIG_KEY
from ifadit.photos.align import apply_affine, ellipse_masks, paste_faces
from ifadit.photos.blend import box_quads, quad_masks, soften_masks
from ifadit.photos.io import PhotoError
from ifadit.photos.metadata import WrongKeyError, open_metadata


@pytest.fixture(scope="module")
def secret() -> SecretKey:
    return SecretKey(bytes(range(32)))


def test_checkpoints_carry_their_model_config_and_nothing_secret(tiny_model) -> None:
    state = torch.load(tiny_model.checkpoint, map_location="cpu", weights_only=True)
    config = state[MODEL_CONFIG_KEY]
    assert config["generator"]["class_path"] == "ifadit.nets.stylegan2.StyleGAN2Generator"
    assert config["generator"]["init_args"]["size"] == 64
    assert config["init_from"] is None and config["predict_key_file"] is None
    assert ifadit.Anonymizer.from_checkpoint(tiny_model.checkpoint).resolution == 64


def test_older_checkpoints_need_their_recipe(tiny_model, tmp_path) -> None:
    state = torch.load(tiny_model.checkpoint, map_location="cpu", weights_only=True)
    del state[MODEL_CONFIG_KEY]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    with pytest.raises(ValueError, match="carries no model config") as info:
        ifadit.Anonymizer.from_checkpoint(old)
    assert "\n" not in str(info.value)
    rebuilt = ifadit.Anonymizer.from_checkpoint(old, config=RECIPE)
    original = ifadit.Anonymizer.from_checkpoint(tiny_model.checkpoint)
    for (name, a), (_, b) in zip(
        rebuilt.model.state_dict().items(), original.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(("photo", "count"), [(astronaut, 1), (grace_hopper, 1), (tiled, 4)])
def test_every_face_is_anonymized_and_nothing_outside_the_mask_changes(
    anonymizer, secret, photo, count
) -> None:
    pixels = photo()
    result = anonymizer.anonymize_photo(pixels, secret)
    out = compose_uint8(pixels, result)
    assert len(result.faces) == count
    changed = np.any(out != pixels, axis=-1)
    outside = (result.paste_mask == 0).numpy()
    assert not changed[outside].any()  # bit for bit outside the paste mask
    assert outside.mean() > 0.7  # the face box to the forehead and jaw: a quarter of a close portrait
    # each face changed: most of its fully-masked pixels differ
    mask = result.paste_mask.numpy()
    for face in result.faces:
        x0, y0, x1, y1 = (int(v) for v in face.box)
        core = mask[y0:y1, x0:x1] >= 1
        assert core.sum() > 200 and changed[y0:y1, x0:x1][core].mean() > 0.5
    assert "key_fingerprint" not in result.metadata  # the record to seal holds nothing about the key
    assert result.metadata["model_sha256"] == anonymizer.model_sha256
    assert len(result.metadata["faces"]) == len(result.metadata["regions"]) == count


def test_pil_numpy_and_tensor_inputs_come_back_as_they_came(anonymizer, secret) -> None:
    pixels = astronaut()
    pil = anonymizer.anonymize(Image.fromarray(pixels).convert("RGBA"), secret)
    assert isinstance(pil, Image.Image) and pil.mode == "RGBA" and "ifadit" in pil.info
    original = pixels.astype(np.float32) / 255
    floats = anonymizer.anonymize(original, secret)
    assert floats.dtype == np.float32 and floats.shape == pixels.shape
    untouched = ~np.any(floats != original, axis=-1)
    assert 0.8 < untouched.mean() < 0.99  # the face changed; the rest is the input's own float values
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1
    out = anonymizer.anonymize(torch.stack([tensor, tensor]), secret)
    assert out.shape == (2, *tensor.shape) and out.dtype == torch.float32
    changed = (out[0] != tensor).any(0)
    assert 1000 < changed.sum() < 0.2 * changed.numel()
    np.testing.assert_array_equal(np.asarray(pil.convert("RGB")), anonymizer.anonymize(pixels, secret))
    with pytest.raises(TypeError, match="PIL image, a numpy array or a torch tensor"):
        anonymizer.anonymize([1, 2, 3], secret)


def test_recover_finds_the_faces_in_the_metadata_without_detecting(anonymizer, secret, monkeypatch) -> None:
    anonymized = anonymizer.anonymize(Image.fromarray(grace_hopper()), secret)

    def no_detection(_pixels):
        raise AssertionError("recover must use the recorded faces")

    monkeypatch.setattr(anonymizer.detector, "detect", no_detection)
    recovered = anonymizer.recover(anonymized, secret)
    assert isinstance(recovered, Image.Image) and recovered.size == anonymized.size
    assert open_metadata(json.loads(recovered.info["ifadit"]), secret).record["operation"] == "recover"
    assert secret.fingerprint not in recovered.info["ifadit"] + anonymized.info["ifadit"]
    with pytest.raises(WrongKeyError, match=r"^this key did not anonymize this photo$"):
        anonymizer.recover(anonymized, SecretKey(bytes(32)))


def test_photo_recovery_is_the_models_recovery_of_the_realigned_face(anonymizer, secret) -> None:
    """What the pipeline adds to the model's recovery: re-alignment from the recorded landmarks and the paste;
    nothing else. The model's own quality (how close that is to the original) is measured by
    ``benchmarks/photos.py --recovery`` on a trained checkpoint."""
    pixels = astronaut()
    anonymized = anonymizer.anonymize_photo(pixels, secret)
    anonymized_pixels = compose_uint8(pixels, anonymized)
    right = anonymizer.recover_photo(anonymized_pixels, secret, anonymized.faces)
    prepared = anonymizer.prepare(anonymized_pixels, anonymized.faces)
    with torch.no_grad():
        cond = anonymizer.model.key_scheme(secret, batch_size=1)
        by_hand = anonymizer.model.recover(prepared.crops, cond).image.clamp(-1, 1)
    torch.testing.assert_close(right.generated, by_hand)
    expected, _ = paste_faces(prepared.photo, by_hand, prepared.masks, prepared.matrices)
    torch.testing.assert_close(right.image, expected)
    wrong = anonymizer.recover_photo(anonymized_pixels, SecretKey(bytes(32)), anonymized.faces)
    assert not torch.equal(wrong.generated, right.generated)  # the key reaches the model


def test_a_face_parsing_mask_replaces_the_ellipse(anonymizer, secret) -> None:
    from ifadit.api import Anonymizer

    def square_parser(crops: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(crops.shape[0], 1, *crops.shape[-2:])
        mask[..., 16:48, 12:52] = 1
        return mask

    parsed = Anonymizer(anonymizer.model, detector=anonymizer.detector, mask_fn=square_parser)
    pixels = astronaut()
    with_parser = parsed.anonymize_photo(pixels, secret)
    with_ellipse = anonymizer.anonymize_photo(pixels, secret)
    assert not torch.equal(with_parser.paste_mask, with_ellipse.paste_mask)
    changed = np.any(compose_uint8(pixels, with_parser) != pixels, axis=-1)
    assert not changed[(with_parser.paste_mask == 0).numpy()].any()
    # the parser's square, eroded and blurred as the paper's pipeline does; without a parser, the ellipse
    # joined with the face box widened to the forehead and jaw
    landmarks = torch.tensor([f.landmarks for f in with_parser.faces])
    prepared = parsed.prepare(pixels, with_parser.faces)
    torch.testing.assert_close(prepared.masks, soften_masks(square_parser(prepared.crops)))
    prepared = anonymizer.prepare(pixels, with_parser.faces)
    ellipse = ellipse_masks(apply_affine(prepared.matrices, landmarks), 64)
    boxes = torch.tensor([f.box for f in with_parser.faces])
    hull = quad_masks(apply_affine(prepared.matrices, box_quads(boxes)), 64)
    torch.testing.assert_close(prepared.masks, soften_masks(torch.maximum(ellipse, hull)))


def test_no_face_and_tiny_faces_are_refused(anonymizer, secret) -> None:
    with pytest.raises(PhotoError, match="no face found"):
        anonymizer.anonymize_photo(np.full((200, 300, 3), 127, np.uint8), secret)
    small = np.asarray(Image.fromarray(astronaut()).resize((100, 100), Image.BILINEAR))
    with pytest.raises(PhotoError, match="smaller than 24 px"):
        anonymizer.anonymize_photo(small, secret)


def test_key_material_never_reaches_the_metadata(anonymizer, secret) -> None:
    result = anonymizer.anonymize_photo(astronaut(), secret)
    text = str(result.metadata)
    assert base64.b64encode(secret._SecretKey__material).decode() not in text
    assert secret._SecretKey__material.hex() not in text


def test_a_batch_of_image_tensors_shares_its_model_calls(anonymizer, secret, monkeypatch) -> None:
    """The faces of every image of a (B, 3, H, W) tensor go through the model together, ``batch_size`` at a
    time, and each image comes back as it would alone."""
    to_tensor = lambda pixels: torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1  # noqa: E731
    images = torch.stack([to_tensor(astronaut()), to_tensor(np.ascontiguousarray(grace_hopper()[:512]))])
    alone = [anonymizer.anonymize(image, secret) for image in images]
    calls: list[int] = []
    original = anonymizer.model.anonymize

    def counting(crops: torch.Tensor, cond: torch.Tensor):
        calls.append(crops.shape[0])
        return original(crops, cond)

    monkeypatch.setattr(anonymizer.model, "anonymize", counting)
    monkeypatch.setattr(anonymizer, "batch_size", 8)
    together = anonymizer.anonymize(images, secret)
    assert calls == [2]  # a face from each image, in one call
    torch.testing.assert_close(together, torch.stack(alone), atol=1e-5, rtol=0)


def test_batch_size_defaults_to_the_devices_measured_best(anonymizer) -> None:
    from ifadit.api import Anonymizer
    from ifadit.photos.batch import DEFAULT_BATCH_SIZE, default_batch_size

    assert Anonymizer(anonymizer.model, detector=anonymizer.detector).batch_size == DEFAULT_BATCH_SIZE["cpu"]
    assert default_batch_size("cuda:1") == DEFAULT_BATCH_SIZE["cuda"]
    assert default_batch_size(torch.device("cpu")) == DEFAULT_BATCH_SIZE["cpu"]


def test_photos_are_aligned_as_ifadit_align_writes_training_faces(anonymizer) -> None:
    """The model reads faces cut out exactly as ``ifadit align`` cuts out its training faces."""
    from ifadit.photos.aligner import aligned_crops

    pixels = tiled()
    prepared = anonymizer.prepare(pixels)
    written = aligned_crops(pixels, prepared.faces, anonymizer.resolution)
    model_input = ((prepared.crops + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(model_input.numpy(), written)
