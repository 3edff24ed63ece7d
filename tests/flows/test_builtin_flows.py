"""Options and layouts specific to the glow and realnvp built-ins (their shared contract is tested in
test_flow_properties.py)."""

from __future__ import annotations

import torch

from ifadit import registry
from ifadit.flows.glow import GlowFlow
from ifadit.flows.layers import ActNorm, AffineCoupling, FixedPermutation, InvertibleLinearLU
from ifadit.flows.realnvp import RealNVPFlow


def test_glow_blocks_and_options() -> None:
    flow = GlowFlow(dim=10, cond_dim=3, num_blocks=2, hidden=(32, 16), clamp=0.5)
    kinds = [type(layer) for layer in flow.layers]
    assert kinds == [ActNorm, InvertibleLinearLU, AffineCoupling] * 2
    coupling = flow.layers[2]
    assert [m.out_features for m in coupling.subnet if isinstance(m, torch.nn.Linear)] == [32, 16, 10]
    assert coupling.subnet[0].in_features == 5 + 3
    with torch.no_grad():
        coupling.subnet[-1].bias.fill_(100.0)  # saturate the scales: the clamp must bound them
    _, logdet = coupling(torch.randn(4, 10), torch.randn(4, 3))
    assert logdet.abs().max() <= 0.5 * 5
    state = flow.state_dict()
    assert {"layers.0.initialized", "layers.1.perm", "layers.1.sign", "layers.1.lower"} <= set(state)


def test_realnvp_permutations_are_seeded_buffers() -> None:
    torch.manual_seed(0)
    first = RealNVPFlow(dim=12, cond_dim=2, num_blocks=3, hidden=(8,))
    torch.manual_seed(1)
    second = RealNVPFlow(dim=12, cond_dim=2, num_blocks=3, hidden=(8,))
    kinds = [type(layer) for layer in first.layers]
    assert kinds == [AffineCoupling, FixedPermutation, AffineCoupling, FixedPermutation, AffineCoupling]
    assert torch.equal(first.layers[1].perm, second.layers[1].perm)
    assert not torch.equal(first.layers[1].perm, first.layers[3].perm)
    assert not torch.equal(first.layers[0].subnet[0].weight, second.layers[0].subnet[0].weight)
    assert "layers.1.perm" in first.state_dict()


def test_glow_exact_mixing_round_trip_is_tighter_and_the_same_map():
    torch.manual_seed(3)
    fast = registry.create("flows", "glow", dim=512, cond_dim=512, num_blocks=4)
    exact = registry.create("flows", "glow", dim=512, cond_dim=512, num_blocks=4, exact_mixing=True)
    exact.load_state_dict(fast.state_dict())
    z = torch.nn.functional.normalize(torch.randn(256, 512), dim=1)
    c = torch.randn(256, 512)
    for flow in (fast, exact):
        flow.train()
        flow(z, c)  # ActNorm's data-dependent init
        flow.eval()
    exact.load_state_dict(fast.state_dict())
    with torch.no_grad():
        y_fast, _ = fast(z, c)
        y_exact, ld = exact(z, c)
        assert y_exact.dtype == torch.float32 and ld.dtype == torch.float32
        torch.testing.assert_close(y_exact, y_fast, atol=1e-5, rtol=1e-5)
        err_fast = (fast.inverse(y_fast, c) - z).abs().max().item()
        err_exact = (exact.inverse(y_exact, c) - z).abs().max().item()
    assert err_exact < err_fast and err_exact < 1e-7
