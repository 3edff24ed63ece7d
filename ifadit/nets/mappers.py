"""The two MLPs of iFADIT: the latent mapper M (identity + attributes -> W+) and the compensator C.

Both keep the official module layout (``model.<i>.weight`` / ``model.<i>.bias`` of one ``nn.Sequential``
named ``model``), so the released ``mlp_best.pth`` and ``fuse_mlp_*.pth`` load into them by key name
(see :mod:`ifadit.release`).

Facts from the official code (``FacePrivacy/iFADIT/models/mlp/LatentMapper.py`` in github lixionga/ProFace):
``LatentMapper`` is ``Linear(1024, 512) -> LeakyReLU(0.2) -> Linear(512, 512)`` applied to the last axis of
a (B, 14, 1024) tensor, i.e. ONE MLP whose weights are shared by all 14 styles (787,456 parameters);
``FusionMapper10`` is ``512 -> 1024 -> 2048 -> 1024 -> 512`` with LeakyReLU(0.2) (5,247,488 parameters).
Both use ``kaiming_normal_(weight, a=0.2)`` and zero biases.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from ifadit.weights import load_component_checkpoint

NEGATIVE_SLOPE = 0.2


def _leaky_mlp(widths: Sequence[int], negative_slope: float) -> nn.Sequential:
    """Linear/LeakyReLU stack whose Linear layers sit at even indices, as in the official modules."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(pairwise(widths)):
        if i > 0:
            layers.append(nn.LeakyReLU(negative_slope))
        linear = nn.Linear(fan_in, fan_out)
        # He init for the leaky slope that follows keeps activations at unit scale through the stack.
        nn.init.kaiming_normal_(linear.weight, a=negative_slope)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
    return nn.Sequential(*layers)


class LatentMapper(nn.Module):
    """Fuses an identity vector with per-style attribute codes into W+ codes for the generator.

    The identity is broadcast over the styles and concatenated with each style's attribute code; one MLP,
    shared by all styles as in the official code, maps every (identity ‖ attribute) row to a W code.
    ``layout_tokens``: rows after the styles (an attribute encoder's spatial layout) pass through as they are:
    the identity reaches the image through W alone.
    ``checkpoint``: a manifest name or a path of a state dict of this class (a shipped phase-1 mapper).
    """

    def __init__(
        self,
        id_dim: int = 512,
        style_dim: int = 512,
        n_styles: int = 14,
        hidden: int = 512,
        w_dim: int | None = None,
        negative_slope: float = NEGATIVE_SLOPE,
        layout_tokens: int = 0,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        if layout_tokens and w_dim not in (None, style_dim):
            raise ValueError("layout_tokens pass through unchanged, so they need w_dim == style_dim")
        self.layout_tokens = layout_tokens
        self.id_dim = id_dim
        self.style_dim = style_dim
        self.n_styles = n_styles
        self.w_dim = style_dim if w_dim is None else w_dim
        self.model = _leaky_mlp((id_dim + style_dim, hidden, self.w_dim), negative_slope)
        if checkpoint is not None:
            load_component_checkpoint(self, checkpoint)

    def forward(self, identity: Tensor, attributes: Tensor) -> Tensor:
        """``identity`` (B, id_dim) or already broadcast (B, n_styles, id_dim); ``attributes``
        (B, n_styles + layout_tokens, style_dim) -> W+ (B, n_styles + layout_tokens, w_dim)."""
        rows = self.n_styles + self.layout_tokens
        if attributes.dim() != 3 or attributes.shape[1:] != (rows, self.style_dim):
            shape = tuple(attributes.shape)
            raise ValueError(f"expected attributes of shape (batch, {rows}, {self.style_dim}), got {shape}")
        attributes, layout = attributes[:, : self.n_styles], attributes[:, self.n_styles :]
        if identity.dim() == 2:
            identity = identity.unsqueeze(1)
        if identity.dim() != 3 or identity.shape[-1] != self.id_dim:
            raise ValueError(
                f"expected identity of shape (batch, {self.id_dim}), got {tuple(identity.shape)}"
            )
        identity = identity.expand(attributes.shape[0], self.n_styles, self.id_dim)
        w_plus = self.model(torch.cat((identity, attributes), dim=2))
        return torch.cat((w_plus, layout), dim=1) if self.layout_tokens else w_plus

    def map_concatenated(self, concatenated: Tensor) -> Tensor:
        """The official call form: an already concatenated (B, n_styles, id_dim + style_dim) tensor."""
        return self.model(concatenated)


class CompensationMLP(nn.Module):
    """Maps the identity embedding of an anonymized *image* back to the flow's output space.

    Re-encoding a rendered face does not give back exactly the latent the flow produced; this MLP
    (``FusionMapper10`` in the official code) learns that correction, so the flow's inverse starts from
    the right place during recovery.
    """

    def __init__(
        self,
        dim: int = 512,
        hidden: Sequence[int] = (1024, 2048, 1024),
        negative_slope: float = NEGATIVE_SLOPE,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.hidden = tuple(hidden)
        self.model = _leaky_mlp((dim, *self.hidden, dim), negative_slope)

    def forward(self, embedding: Tensor) -> Tensor:
        """(B, dim) -> (B, dim)."""
        if embedding.shape[-1] != self.dim:
            raise ValueError(
                f"expected embeddings with last dimension {self.dim}, got {tuple(embedding.shape)}"
            )
        return self.model(embedding)


class ParameterMapper(nn.Module):
    """A renderer's front: SynthFaces parameters (B, n_parameters) in [-1, 1] -> W+ (B, n_styles, style_dim).

    SynthFaces knows every parameter an image was rendered from, so a generator can be trained as a
    supervised renderer (parameters -> image: one right answer per image, nothing to average) through this
    MLP, before the encoders learn to invert it. Its W+ codes are then phase 1's latent targets.
    ``checkpoint``: a manifest name or a path of a state dict of this class.
    """

    def __init__(
        self,
        n_parameters: int,
        n_styles: int,
        style_dim: int,
        hidden: int = 512,
        depth: int = 3,
        negative_slope: float = NEGATIVE_SLOPE,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.n_parameters, self.n_styles, self.style_dim = n_parameters, n_styles, style_dim
        self.model = _leaky_mlp((n_parameters, *[hidden] * (depth - 1), n_styles * style_dim), negative_slope)
        if checkpoint is not None:
            load_component_checkpoint(self, checkpoint)

    def forward(self, parameters: Tensor) -> Tensor:
        if parameters.dim() != 2 or parameters.shape[1] != self.n_parameters:
            raise ValueError(
                f"expected parameters of shape (batch, {self.n_parameters}), got {tuple(parameters.shape)}"
            )
        return self.model(parameters).view(-1, self.n_styles, self.style_dim)
