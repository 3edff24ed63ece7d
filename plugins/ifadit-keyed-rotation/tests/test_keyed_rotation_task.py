"""The flow in ifadit's phase 2: the task's ``density`` loss trains the base as a density model."""

import torch

from ifadit import registry
from ifadit.task import IFADITTask, LossWeights


def test_task_density_loss_is_the_base_nll_per_dimension_of_noisy_identities() -> None:
    dim = 16
    parts = dict(
        identity_encoder=registry.create(
            "identity_encoders", "timm", backbone="resnet10t", embedding_dim=dim, in_size=32
        ),
        attribute_encoder=registry.create(
            "attribute_encoders", "timm", backbone="resnet10t", n_styles=8, style_dim=16
        ),
        mapper=registry.create("mappers", "latent", id_dim=dim, style_dim=16, n_styles=8, hidden=16),
        generator=registry.create("generators", "stylegan2", size=32, style_dim=16, n_mlp=1, max_channels=8),
        flow=registry.create("flows", "keyed_rotation", dim=dim, cond_dim=dim, num_blocks=2, base="allinone"),
        key_scheme=registry.create("key_schemes", "mapping", dim=dim),
    )
    task = IFADITTask(**parts, phase="flow", losses=LossWeights(density=2.0, density_noise=0.1))
    z = torch.nn.functional.normalize(torch.randn(8, dim), dim=1)
    z_a, _ = task.model.flow(z, task.model.key_scheme.sample(8))
    torch.manual_seed(3)
    terms = task._latent_terms(z, z_a, None)
    torch.manual_seed(3)
    noisy = z + 0.1 * torch.randn_like(z)
    expected = 2.0 * -task.model.flow.base.log_prob(noisy).mean() / dim
    torch.testing.assert_close(terms["density"], expected)
    terms["density"].backward()
    assert task.model.flow.base.parameters().__next__().grad is not None
    assert task.model.flow.key_projection.weight.grad is None  # the density does not depend on the key
