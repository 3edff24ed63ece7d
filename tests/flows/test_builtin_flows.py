"""Options and layouts specific to the glow and realnvp built-ins (their shared contract is tested in
test_flow_properties.py)."""

from __future__ import annotations

import torch

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
