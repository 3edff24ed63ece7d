"""IR-SE backbone layout (TreB1eN names) and the ArcFace identity encoder's loading and pre-processing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ifadit.nets.arcface import ArcFaceEncoder
from ifadit.nets.irse import IRBackbone, stage_ends
from ifadit.weights import WeightsError

# Key names and shapes of TreB1eN's Backbone(50, drop_ratio, mode='ir_se') state dict (model.py layout,
# the one model_ir_se50.pth uses): input layer, body unit 0 (64 -> 64, max-pool shortcut), the first
# unit of each later stage (conv shortcut), the SE gates (reduction 16) and the 112 px embedding head.
UPSTREAM_IRSE50_SAMPLE: dict[str, tuple[int, ...]] = {
    "input_layer.0.weight": (64, 3, 3, 3),
    "input_layer.1.weight": (64,),
    "input_layer.1.running_var": (64,),
    "input_layer.2.weight": (64,),
    "body.0.res_layer.0.weight": (64,),
    "body.0.res_layer.1.weight": (64, 64, 3, 3),
    "body.0.res_layer.2.weight": (64,),
    "body.0.res_layer.3.weight": (64, 64, 3, 3),
    "body.0.res_layer.4.running_mean": (64,),
    "body.0.res_layer.5.fc1.weight": (4, 64, 1, 1),
    "body.0.res_layer.5.fc2.weight": (64, 4, 1, 1),
    "body.3.shortcut_layer.0.weight": (128, 64, 1, 1),
    "body.3.shortcut_layer.1.weight": (128,),
    "body.3.res_layer.1.weight": (128, 64, 3, 3),
    "body.3.res_layer.3.weight": (128, 128, 3, 3),
    "body.7.shortcut_layer.0.weight": (256, 128, 1, 1),
    "body.21.shortcut_layer.0.weight": (512, 256, 1, 1),
    "body.23.res_layer.5.fc1.weight": (32, 512, 1, 1),
    "body.23.res_layer.5.fc2.weight": (512, 32, 1, 1),
    "output_layer.0.weight": (512,),
    "output_layer.3.weight": (512, 25088),
    "output_layer.3.bias": (512,),
    "output_layer.4.weight": (512,),
    "output_layer.4.running_var": (512,),
}
IRSE50_UNITS = 24  # 3 + 4 + 14 + 3


def _meta_backbone(**kwargs) -> IRBackbone:
    with torch.device("meta"):
        return IRBackbone(**kwargs)


def _randomize(module: nn.Module) -> nn.Module:
    """Random values everywhere, BN statistics included, so a load that misses anything shows."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return module.eval()


@pytest.fixture(scope="module")
def saver() -> IRBackbone:
    return _randomize(IRBackbone(50, "ir_se", input_size=112))


@pytest.fixture()
def empty_weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("IFADIT_WEIGHTS", str(folder))
    return folder


def test_irse50_names_and_shapes_match_treb1en() -> None:
    state = _meta_backbone().state_dict()
    for key, shape in UPSTREAM_IRSE50_SAMPLE.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    units = {int(k.split(".")[1]) for k in state if k.startswith("body.")}
    assert units == set(range(IRSE50_UNITS))
    # Units whose input and output widths agree shortcut through a parameter-free max-pool.
    assert not any(
        k.startswith("body.0.shortcut_layer") or k.startswith("body.4.shortcut_layer") for k in state
    )


def test_depths_modes_and_input_sizes() -> None:
    for num_layers, units in ((100, 49), (152, 50)):
        state = _meta_backbone(num_layers=num_layers).state_dict()
        assert {int(k.split(".")[1]) for k in state if k.startswith("body.")} == set(range(units))
    assert stage_ends(50) == (2, 6, 20, 23)
    plain_ir = _meta_backbone(mode="ir", affine=False).state_dict()
    assert not any(".res_layer.5." in k for k in plain_ir)
    assert "output_layer.4.weight" not in plain_ir and "output_layer.4.running_mean" in plain_ir
    assert tuple(_meta_backbone(input_size=224).state_dict()["output_layer.3.weight"].shape) == (
        512,
        512 * 14 * 14,
    )
    with pytest.raises(ValueError, match="num_layers"):
        IRBackbone(num_layers=34)
    with pytest.raises(ValueError, match="mode"):
        IRBackbone(mode="se")


def test_treb1en_checkpoint_loads_strictly_and_reproduces_the_saver(
    saver: IRBackbone, tmp_path: Path, empty_weights_dir: Path
) -> None:
    torch.save(saver.state_dict(), empty_weights_dir / "model_ir_se50.pth")
    images = torch.rand(2, 3, 256, 256) * 2 - 1

    encoder = ArcFaceEncoder()  # found in the weights folder under the manifest's file name
    assert encoder.checkpoint_path == str(empty_weights_dir / "model_ir_se50.pth")
    for key, value in saver.state_dict().items():
        assert torch.equal(encoder.backbone.state_dict()[key], value), key

    with torch.no_grad():
        crops = F.adaptive_avg_pool2d(images[:, :, 35:223, 32:220], (112, 112))
        expected = saver(crops)
        embeddings = encoder(images)
    assert embeddings.shape == (2, 512)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)

    # An explicit path, an old file without BN counters and DataParallel's "module." prefix load too.
    legacy = {
        f"module.{k}": v for k, v in saver.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    legacy_path = tmp_path / "legacy.pth"
    torch.save(legacy, legacy_path)
    legacy_encoder = ArcFaceEncoder(checkpoint=str(legacy_path))
    with torch.no_grad():
        torch.testing.assert_close(legacy_encoder(images[:1]), expected[:1], atol=1e-5, rtol=1e-5)


def test_frozen_encoder_stays_in_eval_and_passes_gradients_to_the_image(empty_weights_dir: Path) -> None:
    with pytest.warns(UserWarning, match="random weights"):
        encoder = ArcFaceEncoder(allow_random_init=True)
    wrapper = nn.ModuleDict({"identity": encoder}).train()
    assert not encoder.training and not encoder.backbone.output_layer[0].training
    assert not any(p.requires_grad for p in encoder.parameters())

    images = (torch.rand(1, 3, 128, 128) * 2 - 1).requires_grad_()
    embedding = wrapper["identity"](images)  # a 128 px image is resized to 256 before the crop
    embedding.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0

    resized = F.interpolate(images.detach(), size=(256, 256), mode="bilinear", antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(encoder(resized), embedding.detach(), atol=1e-6, rtol=1e-5)

    with pytest.warns(UserWarning, match="random weights"):
        trainable = ArcFaceEncoder(allow_random_init=True, frozen=False).train()
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())


def test_missing_checkpoint_errors_name_the_file(empty_weights_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"model_ir_se50\.pth") as info:
        ArcFaceEncoder()
    assert str(empty_weights_dir) in str(info.value) and "TreB1eN" in str(info.value)

    absent = tmp_path / "nowhere" / "arcface.pth"
    with pytest.raises(WeightsError, match="not found") as info:
        ArcFaceEncoder(checkpoint=str(absent), allow_random_init=True)  # an explicit path is never skipped
    assert str(absent) in str(info.value)

    with pytest.raises(WeightsError, match="no default checkpoint"):
        ArcFaceEncoder(num_layers=100)


def test_wrong_layouts_are_rejected_with_the_offending_key(tmp_path: Path) -> None:
    wide = tmp_path / "irse50_224.pth"
    torch.save({"output_layer.3.weight": torch.zeros(512, 512 * 14 * 14)}, wide)  # a 224 px head
    with pytest.raises(WeightsError, match=r"output_layer\.3\.weight.*\(512, 100352\).*\(512, 25088\)"):
        ArcFaceEncoder(checkpoint=str(wide))

    container = tmp_path / "psp_like.pt"
    torch.save({"state_dict": {"encoder.input_layer.0.weight": torch.zeros(64, 3, 3, 3)}}, container)
    with pytest.raises(WeightsError, match="plain state dict"):
        ArcFaceEncoder(checkpoint=str(container))

    truncated = tmp_path / "truncated.pth"
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, truncated)
    with pytest.raises(WeightsError, match=r"missing"):
        ArcFaceEncoder(checkpoint=str(truncated))

    with pytest.raises(ValueError, match="crop"):
        ArcFaceEncoder(crop=(35, 300, 32, 220), allow_random_init=True)
