"""The render phase: a generator learns to draw SynthFaces from the parameters they were rendered from.

Every image has exactly one right answer (its parameters fix it), so the render is trained by plain pixel
losses with nothing to average away, unlike a reconstruction through an encoder bottleneck. The trained
parameter mapper then gives phase 1 a W+ target for every face (``latent_target``), in a W+ space that
:func:`standardize_codes` centres and scales before the renderer ships.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifadit.data.synthfaces_params import IDENTITY_NAMES
from ifadit.nets import Generator
from ifadit.nets.mappers import ParameterMapper
from ifadit.nets.stylegan2 import StyleGAN2Generator
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


@torch.no_grad()
def standardize_codes(
    generator: StyleGAN2Generator, parameter_mapper: ParameterMapper, parameters: Tensor
) -> None:
    """Re-parametrize a trained renderer in place so that its W+ codes of ``parameters`` have zero mean and
    unit variance per row and channel, while it renders exactly the same images.

    Phase 1's mapper starts near zero, as pSp's encoder starts from the average latent; the render phase
    leaves codes with a mean of about 19 and a spread of about 10, which the mapper would first have to learn
    (against the frozen renderer, the judge read the reconstruction back at 0.37 after 400 steps with
    standardized codes and 0.16 without: docs/research.md). The generator reads W+ only through its affine
    style layers, so the shift and scale fold into those, and their inverse into the mapper's last layer."""
    codes = torch.cat([parameter_mapper(chunk) for chunk in parameters.split(4096)])
    mean, std = codes.mean(0), codes.std(0).clamp_min(1e-6)
    last = parameter_mapper.model[-1]
    last.bias.sub_(mean.flatten()).div_(std.flatten())
    last.weight.div_(std.flatten()[:, None])
    for row, style in generator.style_inputs():  # style(w) = weight * scale @ w + bias * lr_mul
        style.bias.add_(F.linear(mean[row], style.weight * style.scale) / style.lr_mul)
        style.weight.mul_(std[row])
