"""The render phase: a generator learns to draw SynthFaces from the parameters they were rendered from.

Every image has exactly one right answer (its parameters fix it), so the render is trained by plain pixel
losses with nothing to average away, unlike a reconstruction through an encoder bottleneck. The trained
parameter mapper then gives phase 1 a W+ target for every face (``latent_target``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ifadit.data.synthfaces_params import IDENTITY_NAMES
from ifadit.nets import Generator
from ifadit.training.adversarial import Adversary
from ifadit.training.losses import LossWeights, pixel_terms


def swapped_parameters(parameters: Tensor, identity_count: int) -> Tensor:
    """Image i-1's identity parameters with image i's nuisance: the parameters of phase 1's swap."""
    return torch.cat((parameters.roll(1, dims=0)[:, :identity_count], parameters[:, identity_count:]), dim=1)


def render_terms(
    parameter_mapper: nn.Module,
    generator: Generator,
    weights: LossWeights,
    x: Tensor,
    parameters: Tensor,
    adversary: Adversary | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """The render phase's terms and its render ``G(P(parameters))``."""
    rendered = generator(parameter_mapper(parameters))
    terms = pixel_terms(weights, rendered, x)
    if weights.adversarial and adversary is not None:
        terms["adversarial"] = weights.adversarial * adversary.fool(rendered)
    return terms, rendered


def latent_targets(
    parameter_mapper: nn.Module | None, weights: LossWeights, batch: dict[str, Tensor]
) -> tuple[Tensor, Tensor] | None:
    """The frozen parameter mapper's W+ codes of the batch and of its swap, for ``latent_target``."""
    if not weights.latent_target or parameter_mapper is None:
        return None
    if "parameters" not in batch:
        raise ValueError("losses.latent_target needs SynthFaces batches (their 'parameters')")
    with torch.no_grad():
        own = parameter_mapper(batch["parameters"])
        swapped = parameter_mapper(swapped_parameters(batch["parameters"], len(IDENTITY_NAMES)))
    return own, swapped
