"""The optional spatial layout path: attribute encoder -> mapper (pass-through) -> generator input."""

import pytest
import torch

from ifadit.nets.mappers import LatentMapper
from ifadit.nets.stylegan2 import StyleGAN2Generator
from ifadit.nets.timm_encoders import TimmAttributeEncoder

CHANNELS = {4: 32, 8: 32, 16: 16, 32: 16}
STYLE = 16


def _parts(side: int) -> tuple[TimmAttributeEncoder, LatentMapper, StyleGAN2Generator]:
    torch.manual_seed(0)
    generator = StyleGAN2Generator(32, STYLE, n_mlp=1, channels=CHANNELS, layout_size=side)
    encoder = TimmAttributeEncoder(
        "resnet10t", n_styles=generator.n_latent, style_dim=STYLE, layout_size=side
    )
    mapper = LatentMapper(8, STYLE, generator.n_latent, hidden=32, layout_tokens=side * side)
    return encoder, mapper, generator


@pytest.mark.parametrize("side", [4, 8])
def test_layout_rows_follow_the_styles_and_reach_the_image(side: int) -> None:
    encoder, mapper, generator = _parts(side)
    encoder.eval()  # batch-norm statistics fixed, so two encoders with the same weights agree
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    attributes = encoder(images)
    assert attributes.shape == (2, generator.n_latent + side * side, STYLE)
    # rows before the layout are the plain encoder's styles: the layout head adds rows, it changes none
    styles_only = TimmAttributeEncoder("resnet10t", n_styles=generator.n_latent, style_dim=STYLE).eval()
    shared = {k: v for k, v in encoder.state_dict().items() if not k.startswith("to_layout.")}
    styles_only.load_state_dict(shared)
    torch.testing.assert_close(attributes[:, : generator.n_latent], styles_only(images))
    identity = torch.randn(2, 8)
    w_plus = mapper(identity, attributes)
    torch.testing.assert_close(w_plus[:, generator.n_latent :], attributes[:, generator.n_latent :])
    # zero-initialised 1x1 conv: at the start the generator is the layout-free one ...
    plain = StyleGAN2Generator(32, STYLE, n_mlp=1, channels=CHANNELS)
    plain.load_state_dict({k: v for k, v in generator.state_dict().items() if not k.startswith("layout.")})
    torch.testing.assert_close(generator(w_plus), plain(w_plus[:, : generator.n_latent]))
    # ... and once the conv has weights, a different layout gives a different image and gradients reach
    # the encoder's layout head
    torch.nn.init.normal_(generator.layout.weight, std=0.5)
    moved = w_plus.clone()
    moved[:, generator.n_latent :] = moved[:, generator.n_latent :].roll(1, dims=1)
    assert (generator(w_plus) - generator(moved)).abs().max() > 1e-3
    generator(mapper(identity, encoder(images))).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.to_layout.parameters())


def test_layout_does_not_carry_the_identity_the_mapper_adds() -> None:
    _, mapper, generator = _parts(4)
    attributes = torch.randn(3, generator.n_latent + 16, STYLE)
    a, b = mapper(torch.randn(3, 8), attributes), mapper(torch.randn(3, 8), attributes)
    assert torch.equal(a[:, generator.n_latent :], b[:, generator.n_latent :])
    assert not torch.allclose(a[:, : generator.n_latent], b[:, : generator.n_latent])


def test_layout_shape_errors_are_one_clear_line() -> None:
    _, mapper, generator = _parts(4)
    with pytest.raises(ValueError, match=r"\(B, 24, 16\) \(8 styles \+ 16 layout rows\), got \(2, 8, 16\)"):
        generator(torch.randn(2, generator.n_latent, STYLE))
    with pytest.raises(ValueError, match="expected attributes of shape"):
        mapper(torch.randn(2, 8), torch.randn(2, generator.n_latent, STYLE))
    with pytest.raises(ValueError, match="layout_size must be 0 or a resolution"):
        StyleGAN2Generator(32, STYLE, n_mlp=1, channels=CHANNELS, layout_size=6)
    with pytest.raises(ValueError, match="layout_size must be 0"):
        TimmAttributeEncoder("resnet10t", n_styles=4, style_dim=STYLE, layout_size=-1)
    with pytest.raises(ValueError, match="w_dim == style_dim"):
        LatentMapper(8, STYLE, 4, layout_tokens=16, w_dim=8)
