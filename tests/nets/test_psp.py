"""pSp GradualStyleEncoder: pSp's parameter names, W+ shapes, pSp/e4e checkpoint containers, their errors."""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ifadit.nets.irse import IRBackbone
from ifadit.nets.psp import GradualStyleEncoder, PSPEncoder, n_styles_for, read_psp_checkpoint
from ifadit.weights import WeightsError

# Names and shapes from pSp's GradualStyleEncoder(50, 'ir_se') (models/encoders/psp_encoders.py) as they
# appear under "encoder." in a pSp checkpoint: the IR-SE50 body, one GradualStyleBlock per style with
# log2(16|32|64) = 4|5|6 stride-2 convs (Sequential indices 0, 2, ... between LeakyReLUs) and an
# EqualLinear, and the two FPN lateral 1x1 convs.
UPSTREAM_PSP_SAMPLE: dict[str, tuple[int, ...]] = {
    "input_layer.0.weight": (64, 3, 3, 3),
    "body.0.res_layer.5.fc1.weight": (4, 64, 1, 1),
    "body.23.res_layer.5.fc2.weight": (512, 32, 1, 1),
    "styles.0.convs.0.weight": (512, 512, 3, 3),
    "styles.0.convs.0.bias": (512,),
    "styles.0.convs.6.weight": (512, 512, 3, 3),
    "styles.0.linear.weight": (512, 512),
    "styles.0.linear.bias": (512,),
    "styles.3.convs.8.weight": (512, 512, 3, 3),
    "styles.7.convs.10.weight": (512, 512, 3, 3),
    "styles.13.linear.weight": (512, 512),
    "latlayer1.weight": (512, 256, 1, 1),
    "latlayer1.bias": (512,),
    "latlayer2.weight": (512, 128, 1, 1),
    "latlayer2.bias": (512,),
}
ABSENT_AT_256 = (
    "styles.0.convs.8.weight",
    "styles.3.convs.10.weight",
    "styles.14.linear.weight",
    "output_layer.0.weight",
)
TINY_OUTPUT = 8  # a StyleGAN2 of 8 px takes 4 styles: three coarse, one middle; keeps the files small


def _meta_psp(output_size: int) -> PSPEncoder:
    with torch.device("meta"):
        return PSPEncoder(output_size=output_size)


def _random_encoder(n_styles: int, seed: int = 1) -> GradualStyleEncoder:
    """Skips the default init (hundreds of millions of values): _randomize overwrites everything."""
    with torch.device("meta"):
        encoder = GradualStyleEncoder(n_styles)
    return _randomize(encoder.to_empty(device="cpu"), seed)


def _randomize(module: nn.Module, seed: int = 1) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.zero_()
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return module.eval()


def _container(encoder: nn.Module, **extra: object) -> dict[str, object]:
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["decoder.style.1.weight"] = torch.randn(8, 8)  # pSp keeps the generator in the same state dict
    return {"state_dict": state, **extra}


@pytest.fixture(scope="module")
def tiny_saver() -> GradualStyleEncoder:
    return _random_encoder(n_styles_for(TINY_OUTPUT))


@pytest.fixture()
def empty_weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("IFADIT_WEIGHTS", str(folder))
    return folder


def test_parameter_names_and_shapes_match_psp() -> None:
    state = _meta_psp(256).encoder.state_dict()
    for key, shape in UPSTREAM_PSP_SAMPLE.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    for key in ABSENT_AT_256:
        assert key not in state, key
    assert {int(k.split(".")[1]) for k in state if k.startswith("styles.")} == set(range(14))
    state_1024 = _meta_psp(1024).encoder.state_dict()
    assert {int(k.split(".")[1]) for k in state_1024 if k.startswith("styles.")} == set(range(18))
    assert [n_styles_for(s) for s in (256, 512, 1024)] == [14, 16, 18]
    with pytest.raises(ValueError, match="power of two"):
        n_styles_for(300)


def test_w_plus_shapes_at_256_and_1024() -> None:
    # Shape propagation on the meta device: the real 18-style network holds ~250M parameters.
    assert _meta_psp(256)(torch.empty(2, 3, 256, 256, device="meta")).shape == (2, 14, 512)
    encoder_1024 = _meta_psp(1024)
    assert encoder_1024(torch.empty(2, 3, 1024, 1024, device="meta")).shape == (2, 18, 512)
    assert encoder_1024(torch.empty(1, 3, 256, 256, device="meta")).shape == (1, 18, 512)


@pytest.mark.slow  # the real 14-style encoder: ~210M parameters written, read and run at 256 px
def test_psp_checkpoint_loads_by_name_and_reproduces_the_saver(tmp_path: Path) -> None:
    saver = _random_encoder(14)
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        expected = saver(images)
    latent_avg = torch.randn(14, 512)
    opts = {"output_size": 256, "encoder_type": "GradualStyleEncoder", "start_from_latent_avg": True}
    path = tmp_path / "psp_256.pt"
    torch.save(_container(saver, latent_avg=latent_avg, opts=opts), path)
    del saver

    encoder = PSPEncoder.from_checkpoint(path, output_size=256, frozen=True)
    assert encoder.n_styles == 14 and encoder.add_latent_avg and encoder.opts["output_size"] == 256
    with torch.no_grad():
        codes = encoder(images)
    assert codes.shape == (1, 14, 512)
    torch.testing.assert_close(codes, expected + latent_avg, atol=1e-4, rtol=1e-4)
    checkpoint = read_psp_checkpoint(path)
    assert checkpoint.output_size == 256 and list(checkpoint.decoder_state) == ["style.1.weight"]


def test_with_and_without_latent_avg_and_opts(tiny_saver: GradualStyleEncoder, tmp_path: Path) -> None:
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = tiny_saver(images)
    n_styles = tiny_saver.n_styles
    average = torch.randn(512)

    bare = tmp_path / "bare.pt"  # no latent_avg, no opts
    torch.save(_container(tiny_saver), bare)
    with torch.no_grad():
        codes = PSPEncoder(checkpoint=str(bare), output_size=TINY_OUTPUT, input_size=64).eval()(images)
    torch.testing.assert_close(codes, expected, atol=1e-5, rtol=1e-5)

    # latent_avg without opts: pSp saves it only when it trained relative to it, so it is added;
    # a single (512,) row is repeated over the styles.
    avg_only = tmp_path / "avg_only.pt"
    torch.save(_container(tiny_saver, latent_avg=average), avg_only)
    encoder = PSPEncoder(checkpoint=str(avg_only), output_size=None, input_size=64).eval()
    assert encoder.output_size == TINY_OUTPUT and encoder.latent_avg.shape == (n_styles, 512)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), expected + average, atol=1e-5, rtol=1e-5)

    # opts saying start_from_latent_avg=False keep the raw codes unless add_latent_avg forces it;
    # the opts may be an argparse.Namespace, which loads without unpickling arbitrary objects.
    namespace = tmp_path / "namespace_opts.pt"
    opts = argparse.Namespace(output_size=TINY_OUTPUT, start_from_latent_avg=False)
    torch.save(_container(tiny_saver, latent_avg=average.repeat(n_styles, 1), opts=opts), namespace)
    raw = PSPEncoder(checkpoint=str(namespace), output_size=TINY_OUTPUT, input_size=64).eval()
    forced = PSPEncoder(
        checkpoint=str(namespace), output_size=TINY_OUTPUT, input_size=64, add_latent_avg=True
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(raw(images), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(forced(images), expected + average, atol=1e-5, rtol=1e-5)

    with pytest.raises(WeightsError, match="no latent_avg"):
        PSPEncoder(checkpoint=str(bare), output_size=TINY_OUTPUT, add_latent_avg=True)


def test_e4e_checkpoint_combines_w0_and_deltas(tiny_saver: GradualStyleEncoder, tmp_path: Path) -> None:
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        per_style = tiny_saver(images)  # pSp's combination: each style block's output as is
    average = torch.randn(tiny_saver.n_styles, 512)
    path = tmp_path / "e4e.pt"
    opts = {"encoder_type": "Encoder4Editing", "start_from_latent_avg": True, "dataset_type": "ffhq_encode"}
    torch.save(_container(tiny_saver, latent_avg=average, opts=opts), path)
    encoder = PSPEncoder(checkpoint=str(path), output_size=TINY_OUTPUT, input_size=64).eval()
    assert encoder.encoder_type == "Encoder4Editing"
    with torch.no_grad():
        codes = encoder(images)
    w0 = per_style[:, :1]
    expected = torch.cat([w0, w0 + per_style[:, 1:]], dim=1) + average
    torch.testing.assert_close(codes, expected, atol=1e-5, rtol=1e-5)


def test_n_styles_mismatch_gives_one_clear_error(tmp_path: Path) -> None:
    # Only the style keys of a 1024 px checkpoint matter: the check runs before any tensor is loaded.
    state = {f"styles.{i}.linear.weight": torch.zeros(512, 512) for i in range(18)}
    path = tmp_path / "psp_ffhq_encode.pt"
    torch.save(
        {"state_dict": {f"encoder.{k}": v for k, v in state.items()}, "opts": {"output_size": 1024}}, path
    )
    with pytest.raises(WeightsError) as info:
        PSPEncoder.from_checkpoint(path, output_size=256)
    message = str(info.value)
    for fragment in ("18 styles", "1024 px", "output_size=256", "14"):
        assert fragment in message, (fragment, message)


def test_wrong_shapes_files_and_layouts(
    tiny_saver: GradualStyleEncoder, tmp_path: Path, empty_weights_dir: Path
) -> None:
    container = _container(tiny_saver)
    container["state_dict"]["encoder.latlayer1.weight"] = torch.zeros(512, 128, 1, 1)
    wrong = tmp_path / "wrong.pt"
    torch.save(container, wrong)
    with pytest.raises(WeightsError, match=r"latlayer1\.weight.*\(512, 128, 1, 1\).*\(512, 256, 1, 1\)"):
        PSPEncoder(checkpoint=str(wrong), output_size=TINY_OUTPUT)

    absent = tmp_path / "absent.pt"
    with pytest.raises(WeightsError, match="not found") as info:
        PSPEncoder(checkpoint=str(absent))
    assert str(absent) in str(info.value)
    with pytest.raises(WeightsError, match=r"psp_ffhq_encode\.pt") as info:
        PSPEncoder(checkpoint="psp-ffhq-encode", output_size=1024)
    assert str(empty_weights_dir) in str(info.value)

    plain = tmp_path / "plain.pt"
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, plain)
    with pytest.raises(WeightsError, match="backbone_checkpoint"):
        PSPEncoder(checkpoint=str(plain))

    w_only = tmp_path / "w_encoder.pt"
    torch.save(
        {
            "state_dict": {"encoder.linear.weight": torch.zeros(512, 512)},
            "opts": {"encoder_type": "BackboneEncoderUsingLastLayerIntoW"},
        },
        w_only,
    )
    with pytest.raises(WeightsError, match="BackboneEncoderUsingLastLayerIntoW"):
        PSPEncoder(checkpoint=str(w_only))

    pickled = tmp_path / "pickled_opts.pt"
    torch.save({"state_dict": {}, "opts": {"lr": Fraction(1, 3)}}, pickled)
    with pytest.raises(WeightsError, match="allow_pickle=True"):
        read_psp_checkpoint(pickled)
    with pytest.raises(WeightsError, match="no 'encoder"):  # trusted, it unpickles, and is then judged
        read_psp_checkpoint(pickled, allow_pickle=True)


def _tensor_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_body_initialised_from_an_arcface_checkpoint(tmp_path: Path) -> None:
    arcface = _randomize(IRBackbone(50, "ir_se", input_size=112), seed=3)
    path = tmp_path / "model_ir_se50.pth"
    torch.save(arcface.state_dict(), path)
    encoder = PSPEncoder(output_size=TINY_OUTPUT, backbone_checkpoint=str(path), frozen=True)
    assert _tensor_equal(encoder.encoder.body.state_dict(), arcface.body.state_dict())
    assert _tensor_equal(encoder.encoder.input_layer.state_dict(), arcface.input_layer.state_dict())
    assert encoder.latent_avg is None and not encoder.add_latent_avg

    encoder.train()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(ValueError, match="not both"):
        PSPEncoder(checkpoint=str(path), backbone_checkpoint=str(path))
