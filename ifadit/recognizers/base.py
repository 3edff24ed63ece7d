"""The recognizer contract: face images -> identity embeddings plus a "face found" mask, judged by a rule.

A recognizer *judges* anonymization; it is not the identity encoder the model trains with (that is an
``ifadit.nets.IdentityEncoder``). Each one declares

- its **input convention** (what it expects of the images it gets and whether gradients flow through it),
- its **verification rule** (cosine or Euclidean, and the threshold at which two faces are one person),

so that every metric computes "re-identified" the way that recognizer's authors meant it. A recognizer
that finds no face in an image returns ``found=False`` for it (and a zero embedding), never an exception:
the metrics count those cases.

Images are ifadit's convention everywhere: float NCHW RGB in [-1, 1]; a recognizer converts at its own edge.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifadit.nets import IdentityEncoder

Measure = Literal["cosine", "euclidean"]


@dataclass(frozen=True)
class InputConvention:
    """What a recognizer expects of the images handed to it."""

    size: int | None  # side (px) its network works at after its own resize; None: any size, it finds the face
    aligned: bool  # True: aligned face crops (as its training data); False: it detects and aligns itself
    differentiable: bool  # gradients flow to the images (usable as a loss); False: a judge only
    value_range: tuple[float, float] = (-1.0, 1.0)  # of the images passed to it (it converts internally)


@dataclass(frozen=True)
class Verification:
    """Two faces are one person when their embeddings' cosine is >= ``threshold`` (``measure="cosine"``) or
    their Euclidean distance is <= ``threshold`` (``measure="euclidean"``, dlib's rule)."""

    threshold: float
    measure: Measure = "cosine"

    def __post_init__(self) -> None:
        if self.measure not in ("cosine", "euclidean"):
            raise ValueError(f"measure must be 'cosine' or 'euclidean', got {self.measure!r}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"the verification threshold must be finite, got {self.threshold}")

    def score(self, a: Tensor, b: Tensor) -> Tensor:
        """Row-wise similarity, higher = more alike: the cosine, or minus the distance."""
        a, b = a.double(), b.double()
        if self.measure == "cosine":
            return F.cosine_similarity(a, b, dim=-1)
        return -(a - b).norm(dim=-1)

    def score_matrix(self, probes: Tensor, gallery: Tensor) -> Tensor:
        """(P, G) similarities of every probe to every gallery entry."""
        probes, gallery = probes.double(), gallery.double()
        if self.measure == "cosine":
            return F.normalize(probes, dim=1) @ F.normalize(gallery, dim=1).T
        return -torch.cdist(probes, gallery)

    @property
    def score_threshold(self) -> float:
        """The threshold on :meth:`score`'s scale."""
        return self.threshold if self.measure == "cosine" else -self.threshold

    def same(self, a: Tensor, b: Tensor) -> Tensor:
        return self.score(a, b) >= self.score_threshold

    def describe(self) -> str:
        return f"cos >= {self.threshold:g}" if self.measure == "cosine" else f"L2 <= {self.threshold:g}"


def as_verification(rule: Verification | float) -> Verification:
    """A bare number is a cosine threshold."""
    return rule if isinstance(rule, Verification) else Verification(float(rule))


@dataclass
class Recognition:
    """Embeddings (B, D) and which images held a face (B,) bool; rows without a face are zero."""

    embeddings: Tensor
    found: Tensor

    def __post_init__(self) -> None:
        if self.embeddings.dim() != 2 or self.found.shape != self.embeddings.shape[:1]:
            raise ValueError(
                f"expected embeddings (B, D) and found (B,), got {tuple(self.embeddings.shape)} "
                f"and {tuple(self.found.shape)}"
            )


class Recognizer(nn.Module, ABC):
    """Face images in [-1, 1] -> :class:`Recognition`. Subclasses set ``embedding_dim``, ``convention`` and
    ``verification`` (or leave ``verification`` None until :func:`calibrate_threshold` sets it)."""

    embedding_dim: int
    convention: InputConvention
    verification: Verification | None = None

    @abstractmethod
    def recognize(self, images: Tensor) -> Recognition: ...

    def forward(self, images: Tensor) -> Recognition:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (batch, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        return self.recognize(images)

    @property
    def rule(self) -> Verification:
        """The verification rule; a clear error while the threshold is still unknown."""
        if self.verification is None:
            raise ValueError(
                f"{type(self).__name__} has no verification threshold: give threshold=... or set one with "
                "ifadit.recognizers.calibrate_threshold on labelled faces"
            )
        return self.verification

    def describe(self) -> dict[str, Any]:
        """What a report prints about this recognizer."""
        c = self.convention
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "embedding_dim": self.embedding_dim,
            "verification": None if self.verification is None else self.verification.describe(),
            "input_size": c.size,
            "aligned_input": c.aligned,
            "differentiable": c.differentiable,
        }


class EncoderRecognizer(Recognizer):
    """Any :class:`~ifadit.nets.IdentityEncoder` as a recognizer: every image holds a face (the encoder
    assumes aligned crops and has no detector), cosine verification. The encoder is put in eval mode and
    stays there: a judge never trains (gradients still flow to the images)."""

    def __init__(
        self,
        encoder: IdentityEncoder,
        threshold: float | None = None,
        input_size: int | None = None,
        aligned: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.embedding_dim = int(encoder.embedding_dim)
        self.convention = InputConvention(size=input_size, aligned=aligned, differentiable=True)
        self.verification = None if threshold is None else Verification(float(threshold))
        self.train(False)

    def recognize(self, images: Tensor) -> Recognition:
        embeddings = self.encoder(images)
        found = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        return Recognition(embeddings, found)

    def train(self, mode: bool = True) -> EncoderRecognizer:
        # A judge never trains: its batch norms keep their statistics inside a module put in train mode.
        return super().train(False)


@dataclass(frozen=True)
class Calibration:
    threshold: float
    far: float  # false acceptance rate reached on the different-identity pairs
    tar: float  # true acceptance rate on the same-identity pairs at that threshold
    same_pairs: int
    different_pairs: int


@torch.no_grad()
def calibrate_threshold(
    recognizer: Recognizer,
    batches: Iterable[Mapping[str, Tensor]],
    far: float = 1e-3,
    measure: Measure = "cosine",
    apply: bool = True,
) -> Calibration:
    """The verification threshold at a target false acceptance rate on labelled faces.

    Every pair of images (both with a face) is scored; the threshold is the smallest one at which at most
    ``far`` of the different-identity pairs are accepted. With ``apply`` the recognizer keeps it. Use
    identities the recognizer was not trained on (a validation split)."""
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    embeddings, labels = [], []
    recognizer.eval()
    for batch in batches:
        result = recognizer(batch["image"])
        embeddings.append(result.embeddings[result.found].cpu())
        labels.append(batch["identity"].to(result.found.device)[result.found].cpu())
    if not embeddings:
        raise ValueError("no images to calibrate the threshold on")
    emb, lab = torch.cat(embeddings), torch.cat(labels)
    rule = Verification(0.0, measure)
    scores = rule.score_matrix(emb, emb)
    upper = torch.triu(torch.ones_like(scores, dtype=torch.bool), diagonal=1)
    same = (lab[:, None] == lab[None, :]) & upper
    different = (lab[:, None] != lab[None, :]) & upper
    if not same.any() or not different.any():
        raise ValueError("calibration needs at least two images of one identity and two identities")
    impostor = scores[different]
    # At most m = floor(far * n) impostor pairs may pass: the threshold lies just above the (m+1)-th highest
    # impostor score, so that one and every lower one are rejected.
    allowed = math.floor(far * impostor.numel())
    cut = torch.topk(impostor, min(allowed + 1, impostor.numel())).values[-1]
    score_threshold = torch.nextafter(cut, torch.tensor(math.inf, dtype=cut.dtype)).item()
    reached_far = (impostor >= score_threshold).double().mean().item()
    tar = (scores[same] >= score_threshold).double().mean().item()
    threshold = score_threshold if measure == "cosine" else -score_threshold
    if apply:
        recognizer.verification = Verification(threshold, measure)
    return Calibration(threshold, reached_far, tar, int(same.sum()), int(different.sum()))
