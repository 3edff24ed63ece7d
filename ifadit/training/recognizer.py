"""The recognizer phase: the identity encoder learns identities with an ArcFace margin head (the stand-in
for a pretrained ArcFace where none is available)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ifadit.nets import IdentityEncoder
from ifadit.nets.timm_encoders import ArcFaceHead


def recognizer_loss(encoder: IdentityEncoder, head: ArcFaceHead, images: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the margin head's logits on the encoder's embeddings."""
    return F.cross_entropy(head(encoder(images), labels), labels)


def verification_metrics(embeddings: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Mean cosine of same-identity and different-identity pairs, and ``score`` = minus their gap (lower is
    better, as for every phase's score). Empty when the batch lacks either kind of pair."""
    cos = embeddings @ embeddings.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    same_pairs, diff_pairs = cos[same & off_diagonal], cos[~same]
    if not (len(same_pairs) and len(diff_pairs)):
        return {}
    same_mean, diff_mean = same_pairs.mean(), diff_pairs.mean()
    return {"same_id_cos": same_mean, "diff_id_cos": diff_mean, "score": diff_mean - same_mean}
