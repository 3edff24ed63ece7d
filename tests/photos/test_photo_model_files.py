"""ifadit model files (``.safetensors`` with the model config in the header) and presets, on the tiny photo
model: a model file gives the checkpoint's outputs through ``Anonymizer.from_checkpoint`` and ``--model``,
and a new preset is one YAML file naming its weights (the road the SynthFaces preset will take)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from photo_samples import astronaut

from ifadit.api import Anonymizer
from ifadit.cli import main
from ifadit.keys import SecretKey
from ifadit.model_files import (
    is_model_file,
    load_checkpoint_model,
    model_fingerprint,
    read_model_file,
    write_model_file,
)

COMPONENTS = (
    "identity_encoder", "attribute_encoder", "mapper", "generator", "flow", "key_scheme", "compensator"
)


@pytest.fixture(scope="module")
def model_file(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    loaded = load_checkpoint_model(tiny_model.checkpoint)
    return write_model_file(tmp_path_factory.mktemp("model_file") / "tiny", loaded.task, loaded.config)


def _same_model(a: Anonymizer, b: Anonymizer) -> None:
    b_state = b.model.state_dict()
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b_state[name]), name


def test_a_model_file_is_the_checkpoints_model(tiny_model, model_file: Path) -> None:
    assert is_model_file(model_file) and not is_model_file(tiny_model.checkpoint)  # found by its header
    _, config, metadata = read_model_file(model_file)
    assert metadata["format"] == "ifadit-model" and config["generator"]["init_args"]["size"] == 64
    from_checkpoint = Anonymizer.from_checkpoint(tiny_model.checkpoint)
    from_file = Anonymizer.from_checkpoint(model_file)
    _same_model(from_checkpoint, from_file)
    assert from_file.model_sha256 == model_fingerprint(from_file.model)
    secret = SecretKey(bytes(range(32)))
    assert torch.equal(
        from_file.anonymize_photo(astronaut(), secret).image,
        from_checkpoint.anonymize_photo(astronaut(), secret).image,
    )


def _photo_cli(tmp_path: Path, model: str) -> int:
    from PIL import Image

    key = tmp_path / "k.key"
    SecretKey.generate().save(key)
    Image.fromarray(astronaut()).save(tmp_path / "astronaut.png")
    photo, out = str(tmp_path / "astronaut.png"), str(tmp_path / "out")
    return main(["anonymize", photo, "--out", out, "--model", model, "--key", str(key), "--no_progress"])


def test_model_option_takes_a_model_file(model_file: Path, tmp_path: Path) -> None:
    assert _photo_cli(tmp_path, str(model_file)) == 0
    assert (tmp_path / "out" / "astronaut.png").is_file()


def test_a_new_preset_is_one_yaml_file_naming_its_weights(model_file: Path, tmp_path: Path) -> None:
    state, config, _ = read_model_file(model_file)
    present = [c for c in COMPONENTS if any(k.startswith(f"model.{c}.") for k in state)]
    preset = {
        "name": "tiny64",
        "description": "the tiny photo model, as a preset",
        "resolution": 64,
        "model": config,
        # A path relative to the preset's folder: files can ship next to it.
        "weights": {c: {"file": model_file.name, "prefix": f"model.{c}."} for c in present},
    }
    path = model_file.parent / "tiny64.yaml"
    path.write_text(yaml.safe_dump(preset), encoding="utf-8")

    from_preset = Anonymizer.from_model(path)
    from_file = Anonymizer.from_checkpoint(model_file)
    _same_model(from_file, from_preset)
    assert from_preset.model_sha256 == from_file.model_sha256  # one model, whichever road it came by
    assert _photo_cli(tmp_path, str(path)) == 0
