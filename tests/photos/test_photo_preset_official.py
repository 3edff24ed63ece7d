"""The paper's model from a fake official release (random weights in the official files' layouts, fake public
weights in ``$IFADIT_WEIGHTS``): ``ifadit anonymize`` / ``recover --model ifadit-ffhq256-official`` end to end
on real photos, the faces the preset computes against the same modules called by hand, and ``ifadit convert``.

Every network has its official size (pSp IR-SE50 at 256 px, StyleGAN2 256 px, ArcFace IR-SE50), so one face
costs about 4 s on one CPU thread: the photos go through the CLI once (module fixtures, with a spy recording
each model call, and the preset built once for both commands), and the tests read that run.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_release import FakeWeights, write_fake_weights
from photo_samples import astronaut, grace_hopper
from PIL import Image

import ifadit.model_files
from ifadit.api import Anonymizer
from ifadit.cli import main
from ifadit.keys import SecretKey
from ifadit.keys.schemes import MappingKeyScheme
from ifadit.nets.arcface import ArcFaceEncoder
from ifadit.nets.stylegan2 import StyleGAN2Generator
from ifadit.photos.io import METADATA_KEY
from ifadit.photos.metadata import open_metadata
from ifadit.release import (
    load_official_attribute_encoder,
    load_official_compensator,
    load_official_flow,
    load_official_mapper,
)

PRESET = "ifadit-ffhq256-official"
pytestmark = pytest.mark.slow  # ~20 official-size model passes: about a minute and a half on one thread


def group_photo() -> np.ndarray:
    """Three faces side by side (astronaut, Grace Hopper, the astronaut mirrored): 1536 x 512."""
    return np.ascontiguousarray(
        np.concatenate([astronaut(), grace_hopper()[:512], astronaut()[:, ::-1]], axis=1)
    )


PHOTOS = {"astronaut.png": (astronaut, 1), "grace.jpg": (grace_hopper, 1), "group.png": (group_photo, 3)}


@dataclass
class Run:
    code: int
    out: str


@dataclass
class PresetRun:
    fake: FakeWeights
    key: Path
    inputs: Path
    anonymized: Path
    recovered: Path
    anonymize: Run
    recover: Run
    preset: ifadit.model_files.LoadedModel  # what the CLI built from the preset
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # op, crops, faces


def _cli(argv: list[str]) -> Run:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return Run(code, out.getvalue())


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeWeights:
    return write_fake_weights(tmp_path_factory.mktemp("official"))


@pytest.fixture(scope="module")
def preset_run(fake: FakeWeights, tmp_path_factory: pytest.TempPathFactory) -> PresetRun:
    """anonymize the three photos with the preset, then recover the outputs; every model call recorded."""
    root = tmp_path_factory.mktemp("preset_photos")
    key = root / "my.key"
    SecretKey.generate().save(key)
    inputs = root / "in"
    inputs.mkdir()
    for name, (photo, _) in PHOTOS.items():
        Image.fromarray(photo()).save(inputs / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    run_model = Anonymizer.run_model
    build_preset = ifadit.model_files.build_preset
    built: dict[str, ifadit.model_files.LoadedModel] = {}

    def build_once(preset, search=()):  # the CLI's real build, once for both commands
        if not built:
            built["model"] = build_preset(preset, search)
        return built["model"]

    def spy(self: Anonymizer, operation: str, crops: torch.Tensor, secret: SecretKey) -> torch.Tensor:
        faces = run_model(self, operation, crops, secret)
        calls.append((operation, crops.clone(), faces.clone()))
        return faces

    # One face per model call: the faces are then computed exactly as one face by hand (batch 1).
    common = ["--model", PRESET, "--key", str(key), "--format", "png", "--batch_size", "1", "--no_progress"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IFADIT_WEIGHTS", str(fake.weights))
        mp.setattr(Anonymizer, "run_model", spy)
        mp.setattr(ifadit.model_files, "build_preset", build_once)
        anonymize = _cli(["anonymize", str(inputs), "--out", str(root / "anon"), *common])
        recover = _cli(["recover", str(root / "anon"), "--out", str(root / "back"), *common])
    return PresetRun(
        fake, key, inputs, root / "anon", root / "back", anonymize, recover, built["model"], calls
    )


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def _metadata(path: Path, key: Path) -> dict:
    """The photo's metadata, opened with its key (it is sealed)."""
    with Image.open(path) as image:
        return open_metadata(json.loads(image.info[METADATA_KEY]), SecretKey.load(key)).record


def test_preset_anonymizes_and_recovers_every_face_of_real_photos(preset_run: PresetRun) -> None:
    faces = sum(count for _, count in PHOTOS.values())
    assert preset_run.anonymize.code == 0, preset_run.anonymize.out
    assert f"anonymized {faces} face(s) in 3 of 3 photo(s)" in preset_run.anonymize.out
    assert preset_run.recover.code == 0, preset_run.recover.out
    assert f"recovered {faces} face(s) in 3 of 3 photo(s)" in preset_run.recover.out
    assert [op for op, _, _ in preset_run.calls].count("anonymize") >= 1
    assert sum(len(f) for op, _, f in preset_run.calls if op == "recover") == faces
    for name, (_, count) in PHOTOS.items():
        stem = Path(name).stem
        anonymized = preset_run.anonymized / f"{stem}.png"
        recovered = preset_run.recovered / f"{stem}.png"
        original, anon = _pixels(preset_run.inputs / name), _pixels(anonymized)
        assert anon.shape == original.shape == _pixels(recovered).shape
        changed = np.any(anon != original, axis=-1)
        assert 0 < changed.mean() < 0.5, name  # the faces changed, the rest of the photo did not
        metadata = _metadata(anonymized, preset_run.key)
        assert len(metadata["faces"]) == count and metadata["model_resolution"] == 256


def _by_hand(fake: FakeWeights):
    """The official modules, each loaded by its own loader from the fake files."""
    generator = StyleGAN2Generator.from_checkpoint(fake.public_file("stylegan2")).eval()
    return {
        "identity": ArcFaceEncoder(checkpoint=str(fake.public_file("arcface"))).eval(),
        "attributes": load_official_attribute_encoder(fake.release_file("attr")),
        "mapper": load_official_mapper(fake.release_file("mapper")),
        "flow": load_official_flow(fake.release_file("flow")),
        "compensator": load_official_compensator(fake.release_file("compensator")),
        "generator": generator,
    }


@torch.no_grad()
def test_preset_faces_equal_the_modules_called_by_hand(preset_run: PresetRun) -> None:
    m = _by_hand(preset_run.fake)
    secret = SecretKey.load(preset_run.key)
    raw_key = MappingKeyScheme(dim=512).raw(secret, batch_size=1)  # the key in [0.5, 1), as the official code
    cond = m["generator"].map(raw_key)  # ... through the StyleGAN2 mapping network
    _, crops, faces = next(c for c in preset_run.calls if c[0] == "anonymize")
    crop = crops[:1]
    z_anon, _ = m["flow"](m["identity"](crop), cond)
    anonymized = m["generator"](m["mapper"](z_anon, m["attributes"](crop))).clamp(-1, 1)
    assert (anonymized - faces[:1]).abs().max().item() <= 1e-5

    _, crops, faces = next(c for c in preset_run.calls if c[0] == "recover")
    crop = crops[:1]
    z = m["flow"].inverse(m["compensator"](m["identity"](crop)), cond)
    recovered = m["generator"](m["mapper"](z, m["attributes"](crop))).clamp(-1, 1)
    assert (recovered - faces[:1]).abs().max().item() <= 1e-5


def test_convert_round_trip_gives_the_presets_outputs(
    preset_run: PresetRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Public weights only in the weights folder: the release files must come from RELEASE_DIR.
    monkeypatch.setenv("IFADIT_WEIGHTS", str(preset_run.fake.public))
    out = tmp_path / "ifadit-ffhq256-official.safetensors"
    converted = _cli(["convert", str(preset_run.fake.release), str(out)])
    assert converted.code == 0 and out.is_file(), converted.out
    assert _cli(["convert", str(preset_run.fake.release), str(out)]).code == 2  # never overwrites

    anonymizer = Anonymizer.from_checkpoint(out)
    preset = preset_run.preset.model.state_dict()
    for name, tensor in anonymizer.model.state_dict().items():
        assert torch.equal(tensor, preset[name]), name
    # The same model: the same fingerprint, so photos anonymized with one recover with the other.
    assert anonymizer.model_sha256 == preset_run.preset.fingerprint
    recorded = _metadata(preset_run.anonymized / "astronaut.png", preset_run.key)
    assert recorded["model_sha256"] == anonymizer.model_sha256
    _, crops, faces = next(c for c in preset_run.calls if c[0] == "anonymize")
    secret = SecretKey.load(preset_run.key)
    assert torch.equal(anonymizer.run_model("anonymize", crops[:1], secret), faces[:1])
