"""Model presets without building the official model: the shipped YAML parses and names registered components
and manifest files, ``ifadit models`` / ``ifadit weights`` say what each preset still needs, bad ``--model``
values and broken presets fail in one line, ``ifadit convert`` checks the release folder first, and the
official attribute encoder's [0, 1] conversion is a registered component a recipe can start from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ifadit import registry
from ifadit.cli import main
from ifadit.keys import SecretKey
from ifadit.model_files import build_preset, convert_release, resolve_model, resolved_model_config
from ifadit.nets.base import AttributeEncoder
from ifadit.nets.psp import GradualStyleEncoder, n_styles_for
from ifadit.presets import (
    Preset,
    PresetError,
    available_presets,
    load_preset,
    parse_preset,
)
from ifadit.release import OfficialAttributeEncoder
from ifadit.weights import WeightsError
from ifadit.weights_report import format_weights_report, preset_report, weights_report

OFFICIAL = "ifadit-ffhq256-official"
OFFICIAL_FILES = [
    "model_ir_se50.pth",
    "attr_best.pth",
    "stylegan2-ffhq-256.pt",
    "mlp_best.pth",
    "G_net_ffhq15INN607_20_202528.pth",
    "fuse_mlp_ffhq15INN607_20_202528.pth",
]


@pytest.fixture(autouse=True)
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("IFADIT_WEIGHTS", str(folder))
    return folder


def test_shipped_presets_parse_and_name_registered_components_and_manifest_files() -> None:
    assert OFFICIAL in available_presets()
    for name in available_presets():
        preset = load_preset(name)
        config = resolved_model_config(preset.model)  # every class path resolves, every argument exists
        assert config["flow"]["class_path"] and config["init_from"] is None
        assert all(need.spec is not None for need in preset.file_needs()), name
    official = load_preset(OFFICIAL.replace("-", "_"))  # either spelling
    assert [need.filename for need in official.file_needs()] == OFFICIAL_FILES
    assert official.resolution == 256
    assert official.model["attribute_encoder"]["class_path"] == "psp-official"
    assert official.model["key_scheme"]["class_path"] == "mapping"
    assert official.model["key_mapping_from_generator"] is True


def test_models_and_weights_say_which_files_each_preset_still_needs(
    weights: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert OFFICIAL in listing and "6 missing" in listing
    assert main(["models", OFFICIAL]) == 0
    detail = capsys.readouterr().out
    assert all(f"MISSING  {name}" in detail for name in OFFICIAL_FILES)
    assert "drive.google.com" in detail and "rosinality" in detail

    text = format_weights_report(weights_report(verify=False), preset_report())
    assert f"  {OFFICIAL}: needs {', '.join(OFFICIAL_FILES)}" in text
    assert "  attr_best.pth: the Google Drive folder" in text  # where each comes from

    for name in OFFICIAL_FILES[:-1]:
        (weights / name).write_bytes(b"")
    assert f"{OFFICIAL}: needs fuse_mlp_ffhq15INN607_20_202528.pth\n" in format_weights_report(
        weights_report(verify=False), preset_report()
    )
    (weights / OFFICIAL_FILES[-1]).write_bytes(b"")
    assert f"  {OFFICIAL}: ready" in format_weights_report(weights_report(verify=False), preset_report())
    assert main(["models"]) == 0 and "ready" in capsys.readouterr().out


def test_a_preset_with_missing_files_fails_in_one_line_before_building(weights: Path) -> None:
    (weights / "mlp_best.pth").write_bytes(b"")
    with pytest.raises(WeightsError) as info:
        build_preset(OFFICIAL)
    message = str(info.value)
    assert "\n" not in message and "needs 5 missing file(s)" in message
    assert "attr_best.pth" in message and "mlp_best.pth" not in message and str(weights) in message


def test_unknown_model_is_one_line_listing_the_presets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    key = tmp_path / "k.key"
    secret = SecretKey.generate()
    secret.save(key)
    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    code = main(["anonymize", str(tmp_path / "in.png"), "--out", str(tmp_path / "out"), "--model",
                 "ifadit-ffhq1024", "--key", str(key), "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "unknown model 'ifadit-ffhq1024'" in err and OFFICIAL in err and "ifadit models" in err
    assert key.read_text() not in err and secret.fingerprint not in err
    with pytest.raises(PresetError, match=r"unknown model 'nope'.*ifadit-ffhq256-official"):
        resolve_model("nope")
    with pytest.raises(PresetError, match=r"checkpoint file not found: .*missing\.safetensors.*ifadit-ffhq"):
        resolve_model(tmp_path / "missing.safetensors")
    with pytest.raises(PresetError, match="preset file not found"):
        resolve_model("mine.yaml")


def test_model_values_name_files_or_presets(tmp_path: Path) -> None:
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"x")
    assert resolve_model(str(checkpoint)) == checkpoint
    preset = resolve_model(load_preset(OFFICIAL).path)  # a preset .yaml by path
    assert isinstance(preset, Preset) and preset.name == OFFICIAL
    assert isinstance(resolve_model("IFADIT_FFHQ256_OFFICIAL"), Preset)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(extra=1), "unknown key 'extra'"),
        (lambda d: d.pop("model"), "'model' must be an IFADITTask model section"),
        (lambda d: d.update(resolution="256"), "'resolution' must be"),
        (lambda d: d.update(weights={"flow": {"file": "x.pt", "layout": "pickle"}}), "layout must be one of"),
        (lambda d: d.update(weights={"flow": {"file": "x.pt", "match": "order"}}), "match must be"),
        (lambda d: d.update(weights={"flow": 3}), "weights.flow must be a manifest name"),
    ],
)
def test_broken_presets_fail_in_one_line(tmp_path: Path, change, message: str) -> None:
    data = {"name": "mine", "resolution": 64, "model": {"identity_encoder": {"class_path": "timm"}}}
    change(data)
    with pytest.raises(PresetError, match=message) as info:
        parse_preset(data, tmp_path / "mine.yaml")
    assert "\n" not in str(info.value)


def test_convert_checks_the_release_folder_first(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="release folder not found"):
        convert_release(tmp_path / "nowhere", tmp_path / "out.safetensors")
    release = tmp_path / "release"
    release.mkdir()
    (release / "mlp_best.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"lacks attr_best\.pth, G_net_ffhq15INN607_20_\d+\.pth, fuse_mlp"):
        convert_release(release, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


class _Codes(AttributeEncoder):
    """Returns its input's mean per image as every style: shows what range it was handed."""

    n_styles = 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3))[:, None, None].expand(-1, self.n_styles, self.style_dim)


def test_the_zero_one_conversion_is_a_registered_wrapper_recipes_can_start_from(tmp_path: Path) -> None:
    assert registry.get("attribute_encoders", "psp-official") is OfficialAttributeEncoder
    wrapped = registry.instantiate(
        "attribute_encoders", {"class_path": "psp-official", "init_args": {"encoder": _Codes()}}
    )
    images = torch.tensor([-1.0, 0.0, 1.0])[:, None, None, None].expand(3, 3, 4, 4)
    torch.testing.assert_close(wrapped(images)[:, 0, 0], torch.tensor([0.0, 0.5, 1.0]))
    assert (wrapped.n_styles, wrapped.style_dim) == (2, 512)

    # A recipe names attr_best.pth (a path or the manifest name) and trains from it (frozen: false).
    n_styles = n_styles_for(4)
    with torch.device("meta"):
        saver = GradualStyleEncoder(n_styles)
    saver.to_empty(device="cpu")
    with torch.no_grad():
        for name, tensor in saver.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape) + 0.5)
            else:
                tensor.copy_(0.05 * torch.randn(tensor.shape) if tensor.is_floating_point() else 0)
    path = tmp_path / "attr_best.pth"
    torch.save({f"encoder.{k}": v for k, v in saver.state_dict().items()}, path)
    encoder = registry.instantiate(
        "attribute_encoders",
        {"class_path": "psp-official",
         "init_args": {"checkpoint": str(path), "output_size": None, "input_size": 64}},
    )
    assert encoder.n_styles == n_styles and encoder.training
    assert all(p.requires_grad for p in encoder.parameters())
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), saver.eval()((x + 1) / 2))
    with pytest.raises(ValueError, match="not both"):
        OfficialAttributeEncoder(checkpoint=str(path), encoder=_Codes())
