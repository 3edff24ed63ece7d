"""Task wiring that the CLI tests do not reach."""

import pytest
import torch

from ifadit import registry
from ifadit.keys import SecretKey
from ifadit.task import IFADITTask


def _parts(scheme: str = "mapping"):
    return dict(
        identity_encoder=registry.create(
            "identity_encoders", "timm", backbone="resnet10t", embedding_dim=32, in_size=32
        ),
        attribute_encoder=registry.create(
            "attribute_encoders", "timm", backbone="resnet10t", n_styles=8, style_dim=32
        ),
        mapper=registry.create("mappers", "latent", id_dim=32, style_dim=32, n_styles=8, hidden=32),
        generator=registry.create("generators", "stylegan2", size=32, style_dim=32, n_mlp=2, max_channels=16),
        flow=registry.create("flows", "allinone", dim=32, cond_dim=32, num_blocks=2),
        key_scheme=registry.create("key_schemes", scheme, dim=32),
    )


def test_key_mapping_from_generator_uses_the_generator_mapping_network():
    parts = _parts()
    task = IFADITTask(**parts, phase="flow", key_mapping_from_generator=True)
    secret = SecretKey.generate()
    scheme = task.model.key_scheme
    torch.testing.assert_close(scheme(secret), parts["generator"].map(scheme.raw(secret)))
    assert not any(k.startswith("model.key_scheme._external") for k in task.state_dict())


def test_key_mapping_from_generator_needs_a_mapping_scheme():
    with pytest.raises(ValueError, match="cannot use a generator's mapping network"):
        IFADITTask(**_parts("bits"), phase="flow", key_mapping_from_generator=True)


def test_a_phase_without_its_components_is_refused():
    parts = _parts()
    del parts["flow"]
    with pytest.raises(ValueError, match="needs the components: flow"):
        IFADITTask(**parts, phase="flow")


def test_swap_pixel_loss_uses_the_rendered_target():
    parts = _parts()
    for name in ("flow", "key_scheme"):
        del parts[name]
    task = IFADITTask(**parts, phase="disentangle")
    task.losses.swap_pixel = 1.0
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    terms, _ = task._reconstruction_terms(x, swap_target=None)
    assert "swap_pixel" not in terms
    terms, _ = task._reconstruction_terms(x, swap_target=torch.zeros_like(x))
    m = task.model
    with torch.no_grad():
        z = m.identity_encoder(x)
        expected = m.render(z.roll(1, dims=0), m.attribute_encoder(x)).abs().mean()
    torch.testing.assert_close(terms["swap_pixel"].detach(), expected, rtol=1e-4, atol=1e-5)
