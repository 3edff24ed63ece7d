"""Unit tests of the shared flow layers (the generic flow contract is in test_flow_properties.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ifadit.flows.layers import (
    ActNorm,
    AffineCoupling,
    FixedPermutation,
    InvertibleLinearLU,
    mlp,
    permutation_index,
    seeded_permutation,
    soft_clamp,
)


def test_mlp_builds_the_official_subnet_layout() -> None:
    net = mlp(768, (256, 128, 128, 256), 512)
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert shapes == {
        "0.weight": (256, 768), "0.bias": (256,), "2.weight": (128, 256), "2.bias": (128,),
        "4.weight": (128, 128), "4.bias": (128,), "6.weight": (256, 128), "6.bias": (256,),
        "8.weight": (512, 256), "8.bias": (512,),
    }  # fmt: skip
    assert all(m.negative_slope == 0.01 for m in net if isinstance(m, nn.LeakyReLU))


def test_seeded_permutation_is_reproducible_and_fixed_permutation_inverts() -> None:
    assert torch.equal(seeded_permutation(50, 3), seeded_permutation(50, 3))
    assert not torch.equal(seeded_permutation(50, 3), seeded_permutation(50, 4))
    layer = FixedPermutation(50, seed=3)
    x = torch.randn(4, 50)
    y, logdet = layer(x, None)
    assert torch.equal(layer.inverse(y, None), x) and torch.equal(logdet, torch.zeros(4))
    assert not torch.equal(y, x)


def test_soft_clamp_is_bounded_and_near_identity_for_small_values() -> None:
    s = torch.linspace(-100, 100, 1001)
    assert soft_clamp(s, 2.0).abs().max() <= 2.0
    small = torch.tensor([-1e-3, 0.0, 1e-3])
    torch.testing.assert_close(soft_clamp(small, 2.0), small, atol=1e-9, rtol=0)


def test_permutation_index_matches_the_matrix_product_and_rejects_non_permutations() -> None:
    perm = torch.randperm(9)
    matrix = torch.eye(9)[perm]
    x = torch.randn(5, 9)
    index = permutation_index(matrix)
    assert torch.equal(x[:, index], x @ matrix.T)
    with pytest.raises(ValueError, match="hard 0/1 permutation"):
        permutation_index(torch.linalg.qr(torch.randn(9, 9))[0])
    duplicated = matrix.clone()
    duplicated[1] = duplicated[0]
    with pytest.raises(ValueError, match="hard 0/1 permutation"):
        permutation_index(duplicated)
    with pytest.raises(ValueError, match="square"):
        permutation_index(torch.ones(2, 3))


def test_actnorm_initialises_from_the_first_training_batch_only() -> None:
    layer = ActNorm(16)
    x = 3.0 + 0.2 * torch.randn(64, 16)
    layer.eval()
    y, logdet = layer(x, None)
    assert torch.equal(y, x) and not layer.initialized  # eval mode never initialises
    layer.train()
    layer(x[:1], None)
    assert not layer.initialized  # one sample has no variance to normalise by
    y, logdet = layer(x, None)
    assert layer.initialized
    torch.testing.assert_close(y.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(logdet, layer.log_scale.sum().expand(64))
    assert (layer.inverse(y, None) - x).abs().max() < 1e-5
    # A second batch with other statistics must not re-initialise.
    before = layer.log_scale.detach().clone()
    layer(5.0 * torch.randn(64, 16), None)
    assert torch.equal(layer.log_scale.detach(), before)


def test_actnorm_initialisation_travels_in_the_state_dict() -> None:
    trained = ActNorm(8)
    trained(torch.randn(32, 8) * 4 + 1, None)
    state = trained.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    fresh = ActNorm(8)  # in training mode: without the buffer it would re-initialise on this batch
    fresh.load_state_dict(state)
    x = torch.randn(32, 8)
    assert torch.equal(fresh(x, None)[0], trained(x, None)[0])


def _dense_weight(layer: InvertibleLinearLU) -> torch.Tensor:
    eye = torch.eye(layer.lower.shape[0], dtype=layer.lower.dtype)
    lower = torch.tril(layer.lower, -1) + eye
    upper = torch.triu(layer.upper, 1) + torch.diag(layer.sign * torch.exp(layer.log_abs_diag))
    permutation = eye[layer.perm]
    return permutation @ lower @ upper


def test_lu_linear_matches_its_dense_matrix_and_log_det() -> None:
    layer = InvertibleLinearLU(12).double()
    with torch.no_grad():
        layer.upper.add_(0.3 * torch.randn(12, 12, dtype=torch.float64))
        layer.log_abs_diag.add_(0.5 * torch.randn(12, dtype=torch.float64))
    weight = _dense_weight(layer)
    x = torch.randn(7, 12, dtype=torch.float64)
    for grad in (True, False):  # factor path and cached-matrix path
        with torch.set_grad_enabled(grad):
            y, logdet = layer(x, None)
            torch.testing.assert_close(y, x @ weight.T, atol=1e-12, rtol=0)
            torch.testing.assert_close(logdet, torch.linalg.slogdet(weight).logabsdet.expand(7))
            torch.testing.assert_close(layer.inverse(y, None), x, atol=1e-12, rtol=0)


def test_lu_linear_caches_the_matrix_until_a_parameter_changes() -> None:
    layer = InvertibleLinearLU(10)
    x = torch.randn(4, 10)
    with torch.no_grad():
        layer(x, None)
        first = layer._cached_weight
        layer(x, None)
        layer.inverse(x, None)
        assert layer._cached_weight is first  # no recomposition on repeated inference
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    y, _ = layer(x, None)
    y.pow(2).sum().backward()
    optimizer.step()
    with torch.no_grad():
        y_after, _ = layer(x, None)
        assert layer._cached_weight is not first
        torch.testing.assert_close(y_after, x @ _dense_weight(layer).T, atol=1e-5, rtol=0)
        layer.double()
        y64, _ = layer(x.double(), None)
        assert layer._cached_weight.dtype == torch.float64 and y64.dtype == torch.float64


def test_lu_linear_inverse_is_differentiable_in_training() -> None:
    layer = InvertibleLinearLU(10)
    y = torch.randn(4, 10)
    layer.inverse(y, None).sum().backward()
    grads = [layer.lower.grad, layer.upper.grad, layer.log_abs_diag.grad]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_affine_coupling_keeps_the_passive_half_and_clamps_the_scale() -> None:
    layer = AffineCoupling(7, 3, hidden=(16,), clamp=1.5)
    x, cond = torch.randn(5, 7), torch.randn(5, 3)
    y, logdet = layer(x, cond)
    assert torch.equal(y[:, :4], x[:, :4]) and not torch.allclose(y[:, 4:], x[:, 4:])
    assert (layer.inverse(y, cond) - x).abs().max() < 1e-6
    assert not torch.allclose(layer(x, torch.randn(5, 3))[0], y)  # the condition matters at init
    with torch.no_grad():
        layer.subnet[-1].bias.fill_(1e4)  # an exploding subnet still yields bounded log-scales
    _, logdet = layer(x, cond)
    assert logdet.abs().max() <= 1.5 * 3
    with pytest.raises(ValueError, match="clamp"):
        AffineCoupling(7, 3, hidden=(16,), clamp=0.0)


def test_lu_linear_cache_built_in_inference_mode_serves_input_gradients() -> None:
    layer = InvertibleLinearLU(10).requires_grad_(False)
    with torch.inference_mode():
        layer(torch.randn(2, 10), None)  # builds the cache here
    x = torch.randn(2, 10, requires_grad=True)
    y, _ = layer(x, None)
    layer.inverse(y, None).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(2, 10))
