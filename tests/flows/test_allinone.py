"""AllInOneFlow must be FrEIA's SequenceINN of AllInOneBlocks, key for key and number for number, so the
official iFADIT checkpoint (G_net_*.pth) loads and behaves as released."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from ifadit.flows.allinone import OFFICIAL_HIDDEN, AllInOneFlow
from ifadit.flows.layers import mlp


def official_subnet(in_features: int, out_features: int) -> nn.Sequential:
    return mlp(in_features, OFFICIAL_HIDDEN, out_features)


@pytest.fixture
def freia():
    """FrEIA is the benchmark extra (``ifadit[bench]``), which `make test` installs: the oracle here."""
    return importlib.import_module("FrEIA")


def build_freia(freia, dim: int, cond_dim: int, num_blocks: int = 4) -> nn.Module:
    from FrEIA.framework import SequenceINN
    from FrEIA.modules import AllInOneBlock

    inn = SequenceINN(dim)
    for _ in range(num_blocks):
        if cond_dim:
            inn.append(AllInOneBlock, cond=0, cond_shape=(cond_dim,), subnet_constructor=official_subnet)
        else:
            inn.append(AllInOneBlock, subnet_constructor=official_subnet)
    with torch.no_grad():  # move the global affine off its init so every term is exercised
        for block in inn.module_list:
            block.global_scale.add_(0.5 * torch.randn_like(block.global_scale))
            block.global_offset.add_(0.1 * torch.randn_like(block.global_offset))
    return inn


def assert_matches_freia(inn: nn.Module, flow: AllInOneFlow, z: torch.Tensor, cond: torch.Tensor | None,
                         atol: float) -> None:  # fmt: skip
    freia_cond = None if cond is None else [cond]
    with torch.no_grad():
        expected, expected_logdet = inn(z, c=freia_cond)
        actual, actual_logdet = flow(z, cond)
        torch.testing.assert_close(actual, expected, atol=atol, rtol=0)
        torch.testing.assert_close(actual_logdet, expected_logdet, atol=atol * 10, rtol=1e-6)
        expected_back, _ = inn(expected, c=freia_cond, rev=True)
        torch.testing.assert_close(flow.inverse(expected, cond), expected_back, atol=atol, rtol=0)


def test_state_dict_layout_is_freias(freia) -> None:
    inn = build_freia(freia, 512, 512)
    flow = AllInOneFlow(dim=512, cond_dim=512, num_blocks=4)
    theirs = {k: tuple(v.shape) for k, v in inn.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in flow.state_dict().items()}
    assert ours == theirs
    assert "module_list.3.subnet.8.weight" in ours and "module_list.0.w_perm_inv" in ours


def test_trainable_parameter_count_is_the_official_one() -> None:
    flow = AllInOneFlow(dim=512, cond_dim=512, num_blocks=4)
    assert sum(p.numel() for p in flow.parameters() if p.requires_grad) == 1_647_616


def test_matches_freia_at_official_size(freia) -> None:
    inn = build_freia(freia, 512, 512)
    flow = AllInOneFlow(dim=512, cond_dim=512, num_blocks=4)
    flow.load_state_dict(inn.state_dict(), strict=True)  # also replaces our random permutations
    z = nn.functional.normalize(torch.randn(64, 512), dim=1)
    assert_matches_freia(inn, flow, z, torch.randn(64, 512), atol=1e-5)


@pytest.mark.parametrize(("dim", "cond_dim"), [(6, 3), (7, 2), (7, 0), (2, 1)])
def test_matches_freia_at_small_and_odd_sizes(freia, dim: int, cond_dim: int) -> None:
    inn = build_freia(freia, dim, cond_dim, num_blocks=3).double()
    flow = AllInOneFlow(dim=dim, cond_dim=cond_dim, num_blocks=3).double()
    flow.load_state_dict(inn.state_dict(), strict=True)
    z = torch.randn(16, dim, dtype=torch.float64)
    cond = torch.randn(16, cond_dim, dtype=torch.float64) if cond_dim else None
    assert_matches_freia(inn, flow, z, cond, atol=1e-12)


def test_global_affine_starts_at_its_init_value() -> None:
    flow = AllInOneFlow(dim=8, cond_dim=2, num_blocks=1, global_affine_init=1.0)
    block = flow.module_list[0]
    torch.testing.assert_close(block._global_scale(), torch.ones(1, 8))
    assert block.global_scale[0, 0].item() == pytest.approx(2 * math.log(math.expm1(5.0)))


def test_loaded_permutation_is_the_one_applied() -> None:
    flow = AllInOneFlow(dim=10, cond_dim=0, num_blocks=1)
    z = torch.randn(3, 10)

    def load_permutation(matrix: torch.Tensor) -> None:
        state = flow.state_dict()
        state["module_list.0.w_perm"] = matrix
        state["module_list.0.w_perm_inv"] = matrix.T.contiguous()
        flow.load_state_dict(state)

    perm = torch.roll(torch.arange(10), 3)
    with torch.no_grad():
        load_permutation(torch.eye(10))
        unpermuted, _ = flow(z)
        load_permutation(torch.eye(10)[perm])
        permuted, _ = flow(z)
        assert torch.equal(permuted, unpermuted @ torch.eye(10)[perm].T)  # FrEIA's F.linear(x, w_perm)
        assert torch.equal(permuted, unpermuted[:, perm])
        torch.testing.assert_close(flow.inverse(permuted), z, atol=1e-6, rtol=0)


def test_a_soft_permutation_is_refused() -> None:
    flow = AllInOneFlow(dim=6, cond_dim=0, num_blocks=1)
    state = flow.state_dict()
    state["module_list.0.w_perm"] = torch.linalg.qr(torch.randn(6, 6))[0]
    flow.load_state_dict(state)
    with pytest.raises(ValueError, match="hard 0/1 permutation"):
        flow(torch.randn(2, 6))


@pytest.mark.parametrize("kwargs", [{"clamp": 0.0}, {"global_affine_init": -1.0}])
def test_bad_options_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AllInOneFlow(dim=6, cond_dim=0, num_blocks=1, **kwargs)
