"""Small trainable encoders built on timm backbones, for low resolutions and CPU recipes.

The paper's encoders (ArcFace IR-SE50, pSp) are large and their weights are not installable offline; these
stand-ins make the whole pipeline trainable end to end at 32-128 px. ``TimmIdentityEncoder`` is meant to be
trained on identity labels with :class:`ArcFaceHead`; ``TimmAttributeEncoder`` replaces pSp.

``pretrained=True`` asks timm for ImageNet weights, which it DOWNLOADS from the Hugging Face hub; it is
off by default and fails at once when ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import math
import os

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifadit.nets.base import AttributeEncoder, IdentityEncoder
from ifadit.nets.image import resize_square
from ifadit.weights import load_component_checkpoint


class _ImageAdapter(nn.Module):
    """[-1, 1] images -> the backbone's input: optional resize, then the backbone's own mean/std."""

    def __init__(self, backbone: nn.Module, in_size: int | None) -> None:
        super().__init__()
        self.in_size = in_size
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), dtype=torch.float32).view(1, -1, 1, 1)
        # Not persistent: they follow from the backbone name, and keep checkpoints free of constants.
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected images (batch, {self.mean.shape[1]}, H, W), got {tuple(images.shape)}"
            )
        if self.in_size is not None:
            images = resize_square(images, self.in_size)
        # channels-last throughout the backbone (its weights too, see _channels_last): oneDNN's fast layout
        # on the CPU, the same numbers (resnet10t training step at 64 px, 2 threads: 1.14x; see
        # benchmarks/training_speed.py).
        return (((images + 1) / 2 - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def _channels_last(backbone: nn.Module) -> nn.Module:
    return backbone.to(memory_format=torch.channels_last)


class TimmIdentityEncoder(IdentityEncoder):
    """timm backbone + BN/linear/BN embedding head, L2-normalised (the usual ArcFace head layout).

    The head's batch norms need batches of 2 or more while training.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        embedding_dim: int = 512,
        pretrained: bool = False,
        in_size: int | None = 112,
        dropout: float = 0.0,
        frozen: bool = False,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.frozen = frozen
        self.backbone = _channels_last(timm.create_model(backbone, pretrained=pretrained, num_classes=0))
        self.adapter = _ImageAdapter(self.backbone, in_size)
        features = self.backbone.num_features
        self.head = nn.Sequential(
            nn.BatchNorm1d(features),
            nn.Dropout(dropout),
            nn.Linear(features, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )
        if checkpoint is not None:
            load_component_checkpoint(self, checkpoint)
        if frozen:
            self.requires_grad_(False)
            self.train(False)

    def train(self, mode: bool = True) -> TimmIdentityEncoder:
        return super().train(mode and not self.frozen)

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(self.adapter(images))
        return F.normalize(self.head(features), dim=1)


class ArcFaceHead(nn.Module):
    """Additive angular margin classifier (ArcFace, Deng et al. 2019): logits for cross-entropy.

    For the target class the logit is ``scale * cos(theta + margin)``, for the others ``scale * cos(theta)``,
    theta being the angle between the embedding and the class centre. Where ``theta + margin`` would pass
    pi (and cos would start to rise again) the target logit becomes ``scale * (cos(theta) - margin *
    sin(margin))``, the usual monotonic continuation, so the penalty never turns into a reward.
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5
    ) -> None:
        super().__init__()
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"margin must be in [0, pi/2), got {margin}")
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """(B, num_classes) cosines between embeddings and class centres, in float32 even under bf16/fp16
        autocast: at scale 32-64 a bf16 cosine (about 3 significant digits) moves logits by tenths,
        the size of the margin itself."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()

    def forward(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scaled logits; with ``labels`` the target-class logits carry the angular margin."""
        cos = self.cosine(embeddings)
        if labels is None:
            return self.scale * cos
        index = labels.long().view(-1, 1)
        cos_target = cos.gather(1, index)
        sin_target = torch.sqrt((1.0 - cos_target.square()).clamp_min(1e-12))
        with_margin = cos_target * math.cos(self.margin) - sin_target * math.sin(self.margin)
        # cos(theta) > cos(pi - m) <=> theta + m < pi: the margin keeps cos decreasing only there.
        fallback = cos_target - self.margin * math.sin(self.margin)
        target = torch.where(cos_target > math.cos(math.pi - self.margin), with_margin, fallback)
        return self.scale * cos.scatter(1, index, target)


class TimmAttributeEncoder(AttributeEncoder):
    """timm feature pyramid -> per-scale pooling -> one linear map to ``n_styles x style_dim``.

    Coarse and fine scales both reach every style code; the linear layer learns which style takes what,
    the job pSp's per-style blocks do at much higher cost. ``pool_grid=1`` averages each feature map to a
    single vector, which throws away *where* things are (pose, framing); ``pool_grid=g`` keeps a g x g grid
    of averages per map, so the codes can say where the face sits.

    ``layout_size=s`` also returns a spatial layout: every feature map pooled to s x s, a 1x1 conv to
    ``style_dim`` channels, appended as ``s * s`` rows after the styles, (B, n_styles + s*s, style_dim).
    A generator built with the same ``layout_size`` takes them as its spatial input.

    ``freeze_batchnorm=True`` keeps the backbone's batch norms in eval mode while the encoder trains: they
    normalize with their stored statistics (an untrained backbone's 0 and 1, so each acts as its affine
    layer alone) instead of the batch's. For small batches: the quickstart's phase 1 (batch 8) with batch
    statistics gave a model no key of which passed the key check (docs/research.md).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        n_styles: int = 14,
        style_dim: int = 512,
        pretrained: bool = False,
        in_size: int | None = None,
        out_indices: tuple[int, ...] | None = None,
        pool_grid: int = 1,
        checkpoint: str | os.PathLike[str] | None = None,
        layout_size: int = 0,
        freeze_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.freeze_batchnorm = freeze_batchnorm
        if pool_grid < 1:
            raise ValueError(f"pool_grid must be at least 1, got {pool_grid}")
        if layout_size < 0:
            raise ValueError(f"layout_size must be 0 (no layout) or positive, got {layout_size}")
        self.n_styles = n_styles
        self.pool_grid = pool_grid
        self.style_dim = style_dim
        extra = {} if out_indices is None else {"out_indices": tuple(out_indices)}
        self.backbone = _channels_last(
            timm.create_model(backbone, pretrained=pretrained, features_only=True, **extra)
        )
        self.adapter = _ImageAdapter(self.backbone, in_size)
        feature_channels = sum(self.backbone.feature_info.channels())
        channels = feature_channels * pool_grid * pool_grid
        self.norm = nn.LayerNorm(channels)
        self.to_styles = nn.Linear(channels, n_styles * style_dim)
        self.layout_size = layout_size
        if layout_size:
            self.to_layout = nn.Sequential(
                nn.GroupNorm(1, feature_channels), nn.Conv2d(feature_channels, style_dim, 1)
            )
        if checkpoint is not None:
            load_component_checkpoint(self, checkpoint)

    def train(self, mode: bool = True) -> TimmAttributeEncoder:
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train(False)
        return self

    def forward(self, images: Tensor) -> Tensor:
        feature_maps = self.backbone(self.adapter(images))
        # Maps smaller than the grid are upsampled by adaptive pooling (repeated cells), so the feature
        # length does not depend on the input size.
        pooled = torch.cat(
            [F.adaptive_avg_pool2d(fmap, self.pool_grid).flatten(1) for fmap in feature_maps], dim=1
        )
        codes = self.to_styles(self.norm(pooled)).view(images.shape[0], self.n_styles, self.style_dim)
        if not self.layout_size:
            return codes
        grid = torch.cat([F.adaptive_avg_pool2d(fmap, self.layout_size) for fmap in feature_maps], dim=1)
        layout = self.to_layout(grid).flatten(2).transpose(1, 2)  # (B, s*s, style_dim), row-major cells
        return torch.cat((codes, layout), dim=1)
