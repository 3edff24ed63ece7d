"""LatentMapper / CompensationMLP: shapes, the official layout and parameter counts, init, gradients."""

import pytest
import torch
import torch.nn.functional as F
from official_layouts import FUSE_MLP, MLP_BEST

from ifadit.nets.mappers import CompensationMLP, LatentMapper

# Facts from the official models/mlp/LatentMapper.py, shared with tests/test_release.py.
OFFICIAL_MAPPER_SHAPES, OFFICIAL_FUSION_MAPPER10_SHAPES = MLP_BEST, FUSE_MLP


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_latent_mapper_has_the_official_layout_and_parameter_count() -> None:
    mapper = LatentMapper()
    assert _shapes(mapper) == OFFICIAL_MAPPER_SHAPES
    assert sum(p.numel() for p in mapper.parameters()) == 787_456


def test_compensator_has_the_official_layout_and_parameter_count() -> None:
    compensator = CompensationMLP()
    assert _shapes(compensator) == OFFICIAL_FUSION_MAPPER10_SHAPES
    assert sum(p.numel() for p in compensator.parameters()) == 5_247_488


def test_latent_mapper_broadcasts_identity_over_styles_and_shares_the_mlp() -> None:
    mapper = LatentMapper(id_dim=8, style_dim=6, n_styles=5, hidden=7)
    identity = torch.randn(3, 8)
    attributes = torch.randn(3, 5, 6)
    w_plus = mapper(identity, attributes)
    assert w_plus.shape == (3, 5, 6)
    # Reference: the official call, an explicit concat of the broadcast identity, through the same MLP.
    concatenated = torch.cat((identity[:, None, :].expand(3, 5, 8), attributes), dim=2)
    w0, b0, w2, b2 = (
        mapper.state_dict()[k] for k in ("model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias")
    )
    expected = F.linear(F.leaky_relu(F.linear(concatenated, w0, b0), 0.2), w2, b2)
    torch.testing.assert_close(w_plus, expected)
    torch.testing.assert_close(mapper.map_concatenated(concatenated), expected)
    # An already broadcast identity gives the same codes.
    torch.testing.assert_close(mapper(identity[:, None].expand(3, 5, 8), attributes), expected)


def test_latent_mapper_w_dim_can_differ_from_style_dim() -> None:
    mapper = LatentMapper(id_dim=4, style_dim=6, n_styles=2, hidden=5, w_dim=3)
    assert mapper(torch.randn(2, 4), torch.randn(2, 2, 6)).shape == (2, 2, 3)


@pytest.mark.parametrize(
    ("identity_shape", "attribute_shape"),
    [((2, 8), (2, 4, 6)), ((2, 7), (2, 5, 6)), ((2, 8), (2, 5))],
)
def test_latent_mapper_rejects_wrong_shapes(identity_shape, attribute_shape) -> None:
    mapper = LatentMapper(id_dim=8, style_dim=6, n_styles=5, hidden=7)
    with pytest.raises(ValueError, match="expected"):
        mapper(torch.randn(identity_shape), torch.randn(attribute_shape))


def test_compensator_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="last dimension 16"):
        CompensationMLP(dim=16, hidden=(8,))(torch.randn(2, 15))


def test_kaiming_init_with_zero_bias() -> None:
    torch.manual_seed(1)
    compensator = CompensationMLP()
    for index in (0, 2, 4, 6):
        layer = compensator.model[index]
        assert torch.count_nonzero(layer.bias) == 0
        # kaiming_normal_(a=0.2, fan_in): std = sqrt(2 / (1 + 0.2^2)) / sqrt(fan_in)
        expected_std = (2.0 / (1.0 + 0.2**2)) ** 0.5 / layer.in_features**0.5
        assert layer.weight.std().item() == pytest.approx(expected_std, rel=0.05)
        assert abs(layer.weight.mean().item()) < 0.01 * expected_std  # ~7 standard errors


def test_gradients_reach_inputs_and_every_parameter() -> None:
    mapper = LatentMapper(id_dim=8, style_dim=6, n_styles=3, hidden=7)
    compensator = CompensationMLP(dim=8, hidden=(16, 4))
    identity = torch.randn(2, 8, requires_grad=True)
    attributes = torch.randn(2, 3, 6, requires_grad=True)
    loss = mapper(compensator(identity), attributes).square().sum()
    loss.backward()
    assert identity.grad is not None and identity.grad.abs().sum() > 0
    assert attributes.grad is not None and attributes.grad.abs().sum() > 0
    for module in (mapper, compensator):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
