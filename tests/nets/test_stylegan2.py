"""StyleGAN2 generator: rosinality key layout, checkpoint loading, rendering, native upfirdn2d."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from ifadit.nets.base import Generator
from ifadit.nets.ops import fused_leaky_relu, make_fir_kernel, upfirdn2d
from ifadit.nets.stylegan2 import ModulatedConv2d, StyleGAN2Generator, Upsample
from ifadit.weights import MANIFEST, WeightsError

# A model small enough for CPU tests (widths capped at 16); everything else follows rosinality's layout.
TINY = {"size": 32, "style_dim": 32, "n_mlp": 2, "max_channels": 16}


def randomized(model: StyleGAN2Generator, seed: int = 0) -> StyleGAN2Generator:
    """Give every parameter (noise strengths and biases included, which start at 0) non-trivial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5 + 0.1)
        for layer in model.style[1:]:
            layer.weight.mul_(1.0 / layer.lr_mul)  # keep the mapping's activations O(1)
    return model


def upstream_shapes(size: int, style_dim: int, n_mlp: int, channels: dict[int, int]) -> dict[str, tuple]:
    """Key -> shape of rosinality ``model.py:Generator(size, style_dim, n_mlp).state_dict()``.

    Written from the upstream source, independently of ifadit's module: ``style`` is
    ``Sequential(PixelNorm, EqualLinear x n_mlp)``; ``StyledConv`` = ``conv`` (ModulatedConv2d: weight
    (1, out, in, k, k), ``modulation`` EqualLinear(style_dim -> in), ``blur.kernel`` 4x4 only when
    upsampling) + ``noise.weight`` (1,) + ``activate.bias`` (out,); ``ToRGB`` = 1x1 modulated conv to 3,
    ``bias`` (1, 3, 1, 1), ``upsample.kernel`` except on ``to_rgb1``; ``noises.noise_i`` buffers of side
    2 ** ((i + 5) // 2) for i < 2 * log2(size) - 3; ``upsamples`` is an empty ModuleList.
    """
    shapes: dict[str, tuple] = {}
    for i in range(1, n_mlp + 1):
        shapes[f"style.{i}.weight"] = (style_dim, style_dim)
        shapes[f"style.{i}.bias"] = (style_dim,)

    def modconv(prefix: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{prefix}.weight"] = (1, cout, cin, k, k)
        shapes[f"{prefix}.modulation.weight"] = (cin, style_dim)
        shapes[f"{prefix}.modulation.bias"] = (cin,)

    def styled(prefix: str, cin: int, cout: int, up: bool) -> None:
        modconv(f"{prefix}.conv", cin, cout, 3)
        if up:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)
        shapes[f"{prefix}.noise.weight"] = (1,)
        shapes[f"{prefix}.activate.bias"] = (cout,)

    def to_rgb(prefix: str, cin: int, up: bool) -> None:
        if up:
            shapes[f"{prefix}.upsample.kernel"] = (4, 4)
        modconv(f"{prefix}.conv", cin, 3, 1)
        shapes[f"{prefix}.bias"] = (1, 3, 1, 1)

    shapes["input.input"] = (1, channels[4], 4, 4)
    styled("conv1", channels[4], channels[4], up=False)
    to_rgb("to_rgb1", channels[4], up=False)
    log_size = size.bit_length() - 1
    for i in range((log_size - 2) * 2 + 1):
        side = 2 ** ((i + 5) // 2)
        shapes[f"noises.noise_{i}"] = (1, 1, side, side)
    cin = channels[4]
    for level, res in enumerate(2**i for i in range(3, log_size + 1)):
        styled(f"convs.{2 * level}", cin, channels[res], up=True)
        styled(f"convs.{2 * level + 1}", channels[res], channels[res], up=False)
        to_rgb(f"to_rgbs.{level}", channels[res], up=True)
        cin = channels[res]
    return shapes


def write_rosinality_file(path: Path, g_ema: dict, latent_avg: torch.Tensor | None, training: bool) -> Path:
    """rosinality's containers: train.py (g, d, g_ema, optimisers, argparse args) or convert_weight.py."""
    ckpt: dict = {"g_ema": g_ema}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    if training:
        ckpt.update(
            g={k: v.clone() for k, v in g_ema.items()},
            d={"convs.0.0.weight": torch.randn(4, 3, 1, 1)},
            g_optim={"state": {}, "param_groups": [{"lr": 0.002, "params": [0, 1]}]},
            args=argparse.Namespace(size=32, channel_multiplier=2, iter=800000),
            ada_aug_p=0.0,
        )
    torch.save(ckpt, path)
    return path


# -- key layout and size --------------------------------------------------------------------------------


def test_state_dict_is_rosinality_layout_at_64px_cm1() -> None:
    with torch.device("meta"):
        model = StyleGAN2Generator(64, 512, 8, channel_multiplier=1)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # A literal sample as read from upstream model.py for Generator(64, 512, 8, channel_multiplier=1):
    # channels {4..32: 512, 64: 256}; convs.6 is the 32->64 upsampling conv; noises 0..8.
    sample = {
        "style.1.weight": (512, 512),
        "style.8.bias": (512,),
        "input.input": (1, 512, 4, 4),
        "conv1.conv.weight": (1, 512, 512, 3, 3),
        "conv1.conv.modulation.weight": (512, 512),
        "conv1.conv.modulation.bias": (512,),
        "conv1.noise.weight": (1,),
        "conv1.activate.bias": (512,),
        "to_rgb1.conv.weight": (1, 3, 512, 1, 1),
        "to_rgb1.bias": (1, 3, 1, 1),
        "convs.0.conv.blur.kernel": (4, 4),
        "convs.6.conv.weight": (1, 256, 512, 3, 3),
        "convs.7.conv.weight": (1, 256, 256, 3, 3),
        "convs.7.conv.modulation.weight": (256, 512),
        "to_rgbs.3.conv.weight": (1, 3, 256, 1, 1),
        "to_rgbs.3.upsample.kernel": (4, 4),
        "noises.noise_0": (1, 1, 4, 4),
        "noises.noise_8": (1, 1, 64, 64),
    }
    assert {k: own.get(k) for k in sample} == sample
    for absent in ("style.0.weight", "style.9.weight", "convs.1.conv.blur.kernel", "to_rgb1.upsample.kernel"):
        assert absent not in own
    # 16 mapping + 1 const + 5 conv1 + 4 to_rgb1 + 4 levels x (6 + 5 + 5) + 9 noise maps
    assert len(own) == 99
    assert own == upstream_shapes(64, 512, 8, {4: 512, 8: 512, 16: 512, 32: 512, 64: 256})
    assert (model.n_latent, model.num_layers) == (10, 9)
    assert isinstance(model, Generator)


def test_blur_kernels_carry_the_upstream_values() -> None:
    model = StyleGAN2Generator(**TINY)
    expected = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64 * 4
    torch.testing.assert_close(model.convs[0].conv.blur.kernel, expected)
    torch.testing.assert_close(model.to_rgbs[0].upsample.kernel, expected)


def test_parameter_count_matches_rosinality_256px() -> None:
    # By hand from upstream (style_dim 512, n_mlp 8, cm 2, channels 4..64: 512, 128: 256, 256: 128):
    #   StyledConv(i->o): 9*o*i + 513*i (modulation) + 1 (noise) + o (bias);  ToRGB(i): 3*i + 513*i + 3
    #   mapping 8 * (512*512 + 512)                  = 2,101,248
    #   const 512*16 + conv1 2,622,465 + to_rgb1 264,195 = 2,894,852
    #   8..64 px: 4 x (2,622,465 + 2,622,465 + 264,195) = 22,036,500
    #   128 px: 1,442,561 + 721,409 + 132,099            = 2,296,069
    #   256 px: 426,369 + 213,249 + 66,051               = 705,669
    #   total                                            = 30,034,338
    # The often-quoted 24,767,458 is the channel_multiplier=1 model (checked below), not cm=2.
    with torch.device("meta"):
        cm2 = StyleGAN2Generator(256, 512, 8, channel_multiplier=2)
        cm1 = StyleGAN2Generator(256, 512, 8, channel_multiplier=1)
    assert sum(p.numel() for p in cm2.parameters()) == 30_034_338
    assert sum(p.numel() for p in cm1.parameters()) == 24_767_458
    assert cm2.n_latent == 14


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(size=48)


# -- checkpoints -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_latent_avg", [True, False])
@pytest.mark.parametrize("training_container", [True, False])
def test_checkpoint_round_trip_reproduces_outputs(
    tmp_path: Path, with_latent_avg: bool, training_container: bool
) -> None:
    source = randomized(StyleGAN2Generator(**TINY)).eval()
    latent_avg = torch.randn(TINY["style_dim"]) if with_latent_avg else None
    path = write_rosinality_file(tmp_path / "g.pt", source.state_dict(), latent_avg, training_container)
    w_plus = torch.randn(2, source.n_latent, TINY["style_dim"])
    with torch.no_grad():
        expected = source(w_plus)
        explicit = StyleGAN2Generator.from_checkpoint(path, **TINY).eval()  # settings given
        inferred = StyleGAN2Generator.from_checkpoint(path).eval()  # settings read off the shapes
        at_init = StyleGAN2Generator(**TINY, checkpoint=str(path)).eval()
        for model in (explicit, inferred, at_init):
            assert torch.equal(model(w_plus), expected)
    assert inferred.channels == source.channels and inferred.size == 32
    if with_latent_avg:
        assert torch.equal(explicit.latent_avg, latent_avg)
        torch.testing.assert_close(explicit.truncate(w_plus, 0.0), latent_avg.expand_as(w_plus))
    else:
        assert explicit.latent_avg is None


def test_file_written_from_upstream_key_table_loads_strictly(tmp_path: Path) -> None:
    model = StyleGAN2Generator(**TINY)
    shapes = upstream_shapes(32, 32, 2, model.channels)
    state = {k: torch.randn(shape) for k, shape in shapes.items()}
    path = write_rosinality_file(tmp_path / "g.pt", state, torch.randn(32), training=False)
    loaded = StyleGAN2Generator.from_checkpoint(path, **TINY)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_wrong_shape_names_key_and_both_shapes(tmp_path: Path) -> None:
    state = StyleGAN2Generator(**TINY).state_dict()
    state["convs.1.conv.weight"] = torch.randn(1, 8, 16, 3, 3)
    path = write_rosinality_file(tmp_path / "g.pt", state, None, training=False)
    with pytest.raises(
        WeightsError, match=r"convs\.1\.conv\.weight.*\(1, 8, 16, 3, 3\).*\(1, 16, 16, 3, 3\)"
    ):
        StyleGAN2Generator.from_checkpoint(path, **TINY)


def test_missing_key_and_wrong_size_are_named(tmp_path: Path) -> None:
    state = StyleGAN2Generator(**TINY).state_dict()
    del state["conv1.noise.weight"]
    path = write_rosinality_file(tmp_path / "g.pt", state, None, training=False)
    with pytest.raises(WeightsError, match=r"conv1\.noise\.weight"):
        StyleGAN2Generator.from_checkpoint(path, **TINY)
    full = write_rosinality_file(tmp_path / "full.pt", StyleGAN2Generator(**TINY).state_dict(), None, False)
    with pytest.raises(WeightsError, match=r"convs\.6\.conv\.weight.*18 missing"):  # 64 px: one level more
        StyleGAN2Generator.from_checkpoint(full, **{**TINY, "size": 64})


def test_missing_file_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsError, match="not found"):
        StyleGAN2Generator.from_checkpoint(tmp_path / "absent.pt")
    monkeypatch.setenv("IFADIT_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match=r"stylegan2-ffhq-256\.pt.*rosinality") as info:
        StyleGAN2Generator.from_checkpoint("stylegan2-ffhq-256")
    assert str(tmp_path) in str(info.value)
    with pytest.raises(WeightsError, match="stylegan2-ffhq-config-f"):
        StyleGAN2Generator(size=1024, checkpoint="stylegan2-ffhq-config-f")
    assert MANIFEST["stylegan2-ffhq-256"].layout == "rosinality"


def test_file_without_g_ema_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    state = randomized(StyleGAN2Generator(**TINY)).state_dict()
    torch.save(state, path)
    with pytest.raises(WeightsError, match="no 'g_ema' entry"):
        StyleGAN2Generator.from_checkpoint(path)
    loaded = StyleGAN2Generator.from_checkpoint(path, key=None)  # a bare state dict (e.g. a stripped decoder)
    assert torch.equal(loaded.style[1].weight, state["style.1.weight"])


# -- rendering ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 256])
def test_render_is_deterministic_and_differentiable(size: int) -> None:
    model = randomized(StyleGAN2Generator(size=size, style_dim=32, n_mlp=2, max_channels=16))
    w_plus = torch.randn(2, model.n_latent, 32, requires_grad=True)
    image = model(w_plus)
    assert image.shape == (2, 3, size, size) and torch.isfinite(image).all()
    assert torch.equal(model(w_plus), image)  # stored noise maps: deterministic
    assert not torch.equal(model(w_plus, randomize_noise=True), image)
    noise = model.make_noise(batch=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(w_plus, noise=noise), model(w_plus, noise=noise))
    image.square().mean().backward()
    per_style = w_plus.grad.abs().sum(dim=(0, 2))
    assert (per_style > 0).all(), per_style  # every one of the n_latent styles drives the image


def test_samples_do_not_mix_and_w_broadcasts() -> None:
    model = randomized(StyleGAN2Generator(**TINY))
    w = torch.randn(3, TINY["style_dim"])
    with torch.no_grad():
        batch = model(w)
        single = model(w[1:2].unsqueeze(1).repeat(1, model.n_latent, 1))
    torch.testing.assert_close(batch[1:2], single, rtol=1e-5, atol=1e-5)


def test_stored_noise_buffers_are_used() -> None:
    model = randomized(StyleGAN2Generator(**TINY))
    w = torch.randn(1, TINY["style_dim"])
    with torch.no_grad():
        before = model(w)
        model.noises.noise_3.normal_()
        assert not torch.equal(model(w), before)


def test_wrong_latent_shape_is_refused() -> None:
    model = StyleGAN2Generator(**TINY)
    with pytest.raises(ValueError, match="W\\+ of shape"):
        model(torch.randn(1, model.n_latent + 1, TINY["style_dim"]))


def test_mapping_and_truncation() -> None:
    model = randomized(StyleGAN2Generator(**TINY))
    z = torch.randn(5, TINY["style_dim"])
    w = model.map(z)
    assert w.shape == (5, TINY["style_dim"])
    # PixelNorm first: the mapping ignores the scale of z.
    torch.testing.assert_close(model.map(3.0 * z), w)
    avg = model.mean_latent(64, generator=torch.Generator().manual_seed(0))
    assert avg.shape == (1, TINY["style_dim"])
    torch.testing.assert_close(model.truncate(w, 0.5, avg), avg + 0.5 * (w - avg))
    assert model.latent_avg is None
    torch.testing.assert_close(model.truncate(w, 1.0), w)  # estimates and keeps an average
    assert model.latent_avg is not None and model.latent_avg.shape == (TINY["style_dim"],)
    assert "latent_avg" not in model.state_dict()  # keeps the rosinality key set exact


def test_full_size_256px_cm2_renders_one_image() -> None:
    model = StyleGAN2Generator(256, 512, 8, channel_multiplier=2).eval()
    with torch.no_grad():
        image = model(model.map(torch.randn(1, 512)))
    assert image.shape == (1, 3, 256, 256) and torch.isfinite(image).all() and image.std() > 0


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("demodulate", [False, True])
def test_modulated_conv_matches_per_sample_reference(upsample: bool, demodulate: bool) -> None:
    """The paper's per-sample weights, against the batched non-fused form: outputs and every gradient."""
    conv = ModulatedConv2d(5, 4, 3, style_dim=6, demodulate=demodulate, upsample=upsample)
    x = torch.randn(3, 5, 6, 6, requires_grad=True)
    w = torch.randn(3, 6, requires_grad=True)
    expected = []
    for sample in range(3):  # the StyleGAN2 paper's equations, one sample at a time
        style = conv.modulation(w[sample : sample + 1]).view(1, 5, 1, 1)
        weight = conv.weight[0] / (5 * 9) ** 0.5 * style  # (out, in, k, k)
        if demodulate:
            weight = weight / (weight.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        if upsample:
            out = torch.nn.functional.conv_transpose2d(
                x[sample : sample + 1], weight.transpose(0, 1), stride=2
            )
            out = upfirdn2d(out, conv.blur.kernel, pad=(1, 1))
        else:
            out = torch.nn.functional.conv2d(x[sample : sample + 1], weight, padding=1)
        expected.append(out)
    expected_out = torch.cat(expected)
    out = conv(x, w)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(out)
    inputs = (x, w, conv.weight, conv.modulation.weight, conv.modulation.bias)
    grads = torch.autograd.grad(out, inputs, upstream)
    expected_grads = torch.autograd.grad(expected_out, inputs, upstream)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.meshgrid(torch.arange(image.shape[-2]), torch.arange(image.shape[-1]), indexing="ij")
    total = image.sum()
    return (float((image * rows).sum() / total), float((image * cols).sum() / total))


def test_both_upsampling_paths_keep_pixel_centres_aligned() -> None:
    # Input pixel i covers output pixels 2i and 2i + 1: a point at (2, 3) must land centred on (4.5, 6.5).
    # This pins the FIR padding of rosinality's Upsample (2, 1) and of the blur after the transposed conv.
    point = torch.zeros(1, 1, 6, 6)
    point[0, 0, 2, 3] = 1.0
    upsampled = Upsample((1, 3, 3, 1))(point)
    assert upsampled.shape[-2:] == (12, 12)
    assert centre_of_mass(upsampled[0, 0]) == pytest.approx((4.5, 6.5))
    conv = ModulatedConv2d(1, 1, 3, style_dim=2, demodulate=False, upsample=True)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 1, 1] = 1.0  # identity tap
        conv.modulation.weight.zero_()  # style = bias = 1
    out = conv(point, torch.zeros(1, 2))
    assert out.shape[-2:] == (12, 12)
    assert centre_of_mass(out[0, 0].detach()) == pytest.approx((4.5, 6.5))


# -- native ops -----------------------------------------------------------------------------------------


def reference_upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, pad: tuple[int, int]):
    """Textbook definition, loop form: zero-stuff by index, pad/crop by index, then true convolution."""
    batch, channels, height, width = x.shape
    kh, kw = kernel.shape
    stuffed = torch.zeros(batch, channels, height * up, width * up, dtype=torch.float64)
    stuffed[:, :, ::up, ::up] = x.double()
    p0, p1 = pad
    rows, cols = height * up + p0 + p1, width * up + p0 + p1
    padded = torch.zeros(batch, channels, rows, cols, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            if 0 <= r - p0 < height * up and 0 <= c - p0 < width * up:
                padded[:, :, r, c] = stuffed[:, :, r - p0, c - p0]
    out_h, out_w = (rows - kh) // down + 1, (cols - kw) // down + 1
    out = torch.zeros(batch, channels, out_h, out_w, dtype=torch.float64)
    for y in range(out_h):
        for x_ in range(out_w):
            for m in range(kh):
                for n in range(kw):  # y[t] = sum_m h[m] s[t + K - 1 - m]
                    out[:, :, y, x_] += (
                        kernel[m, n].double() * padded[:, :, y * down + kh - 1 - m, x_ * down + kw - 1 - n]
                    )
    return out.float()


@pytest.mark.parametrize(
    ("up", "down", "pad"),
    [
        (1, 1, (0, 0)),
        (2, 1, (2, 1)),
        (1, 2, (1, 1)),
        (2, 1, (1, 1)),
        (2, 2, (1, 2)),
        (3, 1, (-1, 2)),
        (1, 1, (-1, -1)),
    ],
)
def test_upfirdn2d_matches_loop_reference(up: int, down: int, pad: tuple[int, int]) -> None:
    x = torch.randn(2, 3, 7, 6)
    kernel = torch.randn(4, 3)  # asymmetric and non-square: a missing flip or swapped axis shows
    torch.testing.assert_close(
        upfirdn2d(x, kernel, up, down, pad), reference_upfirdn2d(x, kernel, up, down, pad)
    )


@pytest.mark.parametrize(("up", "down"), [(2, 1), (1, 2), (2, 2), (3, 1)])
def test_upfirdn2d_matches_scipy_on_a_separable_kernel(up: int, down: int) -> None:
    import scipy.signal as signal  # an outside oracle, from the `bench` extra that `make test` installs
    a, b = torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([0.5, 1.0, -1.0, 2.0])
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    expected = signal.upfirdn(a.numpy(), x.numpy(), up=up, down=down, axis=-2)
    expected = torch.from_numpy(signal.upfirdn(b.numpy(), expected, up=up, down=down, axis=-1))
    # scipy's upfirdn is the full convolution of the zero-stuffed signal without its trailing zeros,
    # i.e. StyleGAN's padding (K - 1, K - 1 - (up - 1)).
    ours = upfirdn2d(x, torch.outer(a, b).double(), up, down, pad=(len(a) - 1, len(a) - up))
    torch.testing.assert_close(ours, expected)


def test_fir_filters_preserve_constant_images() -> None:
    kernel = make_fir_kernel([1, 3, 3, 1])
    assert kernel.sum().item() == pytest.approx(1.0)
    ones = torch.ones(1, 2, 6, 6)
    upsampled = upfirdn2d(ones, kernel * 4, up=2, pad=(2, 1))  # ToRGB's skip upsampling
    assert upsampled.shape == (1, 2, 12, 12)
    torch.testing.assert_close(upsampled[:, :, 2:-2, 2:-2], torch.ones(1, 2, 8, 8))
    blurred = upfirdn2d(ones, kernel, pad=(2, 1))
    assert blurred.shape == ones.shape


def test_fused_leaky_relu() -> None:
    x = torch.tensor([[-1.0, 2.0], [0.5, -0.25]]).view(1, 2, 2, 1)
    bias = torch.tensor([1.0, -1.0])
    expected = torch.tensor([[0.0, 3.0], [-0.1, -0.25]]).view(1, 2, 2, 1) * 2**0.5
    torch.testing.assert_close(fused_leaky_relu(x, bias), expected)
