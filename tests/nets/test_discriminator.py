"""StyleGAN2 discriminator: rosinality key layout, checkpoint loading, minibatch stddev, bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from ifadit import registry
from ifadit.nets import Discriminator
from ifadit.nets.discriminator import StyleGAN2Discriminator
from ifadit.nets.stylegan2 import StyleGAN2Generator
from ifadit.weights import WeightsError

SMALL = {16: 8, 8: 16, 4: 16}


def upstream_shapes(size: int, channels: dict[int, int]) -> dict[str, tuple]:
    """Key -> shape of rosinality ``model.py:Discriminator(size).state_dict()``, written from the upstream
    source: ``convs`` = [ConvLayer(3, ch[size], 1)] + one ResBlock(ch[r], ch[r/2]) per resolution down to 8;
    ConvLayer = [Blur (downsampling only, buffer ``kernel`` 4x4)] + EqualConv2d (no bias when activated)
    + FusedLeakyReLU ``bias``; ResBlock = ``conv1`` (3x3), ``conv2`` (3x3, down), ``skip`` (1x1, down,
    no activation, no bias); ``final_conv`` ConvLayer(ch[4] + 1, ch[4], 3); ``final_linear`` =
    EqualLinear(ch[4] * 16, ch[4]) + EqualLinear(ch[4], 1)."""
    c4 = channels[4]
    shapes: dict[str, tuple] = {
        "convs.0.0.weight": (channels[size], 3, 1, 1),
        "convs.0.1.bias": (channels[size],),
    }
    res, index = size, 1
    while res > 4:
        cin, cout, p = channels[res], channels[res // 2], f"convs.{index}"
        shapes.update(
            {
                f"{p}.conv1.0.weight": (cin, cin, 3, 3),
                f"{p}.conv1.1.bias": (cin,),
                f"{p}.conv2.0.kernel": (4, 4),
                f"{p}.conv2.1.weight": (cout, cin, 3, 3),
                f"{p}.conv2.2.bias": (cout,),
                f"{p}.skip.0.kernel": (4, 4),
                f"{p}.skip.1.weight": (cout, cin, 1, 1),
            }
        )
        res, index = res // 2, index + 1
    shapes.update(
        {
            "final_conv.0.weight": (c4, c4 + 1, 3, 3),
            "final_conv.1.bias": (c4,),
            "final_linear.0.weight": (c4, c4 * 16),
            "final_linear.0.bias": (c4,),
            "final_linear.1.weight": (1, c4),
            "final_linear.1.bias": (1,),
        }
    )
    return shapes


def test_state_dict_is_rosinality_layout() -> None:
    model = StyleGAN2Discriminator(16, channels=SMALL)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == upstream_shapes(16, SMALL)
    assert isinstance(model, Discriminator)
    assert registry.get("discriminators", "stylegan2") is StyleGAN2Discriminator


def test_parameter_count_matches_rosinality_256px() -> None:
    # By hand from upstream (cm 2; channels 256: 128, 128: 256, 4..64: 512); ResBlock(i->o) = conv1
    # 9i^2 + i, conv2 9oi + o, skip oi:
    #   from_rgb 3*128 + 128 = 512; 256 px 475,520; 128 px 1,901,312; 64..8 px 4 x 4,981,760 = 19,927,040
    #   final_conv 9*512*513 + 512 = 2,364,416; final_linear 8192*512 + 512 + 512 + 1 = 4,195,329
    #   total 28,864,129
    with torch.device("meta"):
        model = StyleGAN2Discriminator(256, channel_multiplier=2)
    assert sum(p.numel() for p in model.parameters()) == 28_864_129


def test_training_checkpoint_written_from_upstream_key_table_loads_strictly(tmp_path: Path) -> None:
    state = {k: torch.randn(shape) for k, shape in upstream_shapes(16, SMALL).items()}
    path = tmp_path / "550000.pt"  # rosinality train.py's container
    torch.save(
        {
            "g": {}, "d": state, "g_ema": {}, "g_optim": {}, "d_optim": {},
            "args": argparse.Namespace(size=16, channel_multiplier=2), "ada_aug_p": 0.0,
        },
        path,
    )
    loaded = StyleGAN2Discriminator.from_checkpoint(path)  # size and channels read off the shapes
    at_init = StyleGAN2Discriminator(16, channels=SMALL, checkpoint=str(path))  # a recipe's init_args
    assert loaded.size == 16
    for model in (loaded, at_init):
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key
    assert loaded(torch.zeros(2, 3, 16, 16)).shape == (2, 1)


def test_wrong_files_are_explained(tmp_path: Path) -> None:
    generator_only = tmp_path / "g.pt"
    torch.save({"g_ema": StyleGAN2Generator(16, 16, 1, max_channels=8).state_dict()}, generator_only)
    with pytest.raises(WeightsError, match="no 'd' entry"):
        StyleGAN2Discriminator.from_checkpoint(generator_only)
    with pytest.raises(WeightsError, match="not a rosinality StyleGAN2 discriminator"):
        StyleGAN2Discriminator.from_checkpoint(generator_only, key="g_ema")
    state = StyleGAN2Discriminator(16, channels=SMALL).state_dict()
    bare = tmp_path / "d.pt"
    torch.save(state, bare)
    narrower = {16: 8, 8: 16, 4: 8}
    named = r"'convs\.2\.conv2\.1\.weight'.*\(16, 16, 3, 3\).*\(8, 16, 3, 3\)"  # key, file's, model's
    with pytest.raises(WeightsError, match=named):
        StyleGAN2Discriminator.from_checkpoint(bare, key=None, channels=narrower)


def test_the_manifest_name_reads_the_ffhq_generator_file_and_its_discriminator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IFADIT_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match=r"stylegan2-ffhq-256\.pt"):
        StyleGAN2Discriminator(256, checkpoint="stylegan2-ffhq-256")
    state = {k: torch.randn(shape) for k, shape in upstream_shapes(16, SMALL).items()}
    torch.save({"g_ema": {}, "d": state}, tmp_path / "stylegan2-ffhq-256.pt")  # a stand-in of that layout
    loaded = StyleGAN2Discriminator.from_checkpoint("stylegan2-ffhq-256", channels=SMALL, size=16)
    assert torch.equal(loaded.final_linear[1].weight, state["final_linear.1.weight"])


def test_minibatch_stddev_sees_a_batch_of_one_face_and_takes_any_batch_size() -> None:
    model = StyleGAN2Discriminator(16, channels=SMALL)
    same = torch.randn(1, 16, 4, 4).expand(6, -1, -1, -1)
    torch.testing.assert_close(model._minibatch_stddev(same), torch.full((6, 1, 4, 4), 1e-4))
    varied = model._minibatch_stddev(torch.randn(6, 16, 4, 4))
    assert varied.min() > 0.3  # N(0, 1) features: spread ~0.8 over groups of 3 (6 = 3 x 2, not 4 x 1.5)
    for batch in (1, 5, 6, 8):
        assert model(torch.randn(batch, 3, 16, 16)).shape == (batch, 1)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Discriminator(48)
    with pytest.raises(ValueError, match=r"missing \[4\]"):
        StyleGAN2Discriminator(16, channels={16: 8, 8: 8})
    with pytest.raises(ValueError, match="takes 16x16 images"):
        StyleGAN2Discriminator(16, channels=SMALL)(torch.zeros(1, 3, 32, 32))
