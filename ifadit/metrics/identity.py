"""Identity metrics on recognizer embeddings: pair similarity and re-identification, top-1 retrieval from a
gallery, and pairwise diversity among several anonymizations of one face.

Inputs are embeddings and "face found" masks (see :class:`ifadit.recognizers.Recognition`), so the metrics
score any anonymizer with any recognizer. Every count a "no face" verdict changes is reported.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ifadit.recognizers.base import Verification, as_verification


def _mask(found: Tensor | None, n: int, device: torch.device) -> Tensor:
    if found is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    if found.shape != (n,):
        raise ValueError(f"expected a found mask of shape ({n},), got {tuple(found.shape)}")
    return found.to(device=device, dtype=torch.bool)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` as float64, NaN where nothing was counted."""
    return numerator.double() / denominator.double() if denominator > 0 else torch.tensor(float("nan"))


class IdentitySimilarity(Metric):
    """Reference vs probe embeddings, row by row (e.g. original vs anonymized).

    ``compute()`` gives

    - ``cos``: mean cosine over pairs where both images hold a face (and ``distance``, the mean Euclidean
      distance, for a recognizer whose rule is Euclidean, such as dlib's);
    - ``reid_rate``: fraction of pairs the recognizer's rule calls one person, over pairs whose reference
      holds a face (a probe without a face is not re-identified);
    - ``no_face_reference`` / ``no_face_probe``: how many references / probes held no face; ``pairs``: all.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, rule: Verification | float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rule = as_verification(rule)
        self.add_state("cos_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("distance_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        counts = ("both_found", "matched", "reference_found", "no_face_reference", "no_face_probe", "pairs")
        for name in counts:
            self.add_state(name, torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self,
        reference: Tensor,
        probe: Tensor,
        reference_found: Tensor | None = None,
        probe_found: Tensor | None = None,
    ) -> None:
        if reference.shape != probe.shape or reference.dim() != 2:
            raise ValueError(
                f"expected two (B, D) embeddings, got {tuple(reference.shape)} and {tuple(probe.shape)}"
            )
        n = reference.shape[0]
        ref_ok = _mask(reference_found, n, reference.device)
        probe_ok = _mask(probe_found, n, reference.device)
        both = ref_ok & probe_ok
        cos = torch.nn.functional.cosine_similarity(reference.double(), probe.double(), dim=1)
        self.cos_sum += cos[both].sum()
        self.distance_sum += (reference.double() - probe.double()).norm(dim=1)[both].sum()
        self.both_found += both.sum()
        self.matched += (self.rule.same(reference, probe) & both).sum()
        self.reference_found += ref_ok.sum()
        self.no_face_reference += (~ref_ok).sum()
        self.no_face_probe += (~probe_ok).sum()
        self.pairs += n

    def compute(self) -> dict[str, Tensor]:
        euclidean = self.rule.measure == "euclidean"
        distance = {"distance": _ratio(self.distance_sum, self.both_found)} if euclidean else {}
        return {
            "cos": _ratio(self.cos_sum, self.both_found),
            **distance,
            "reid_rate": _ratio(self.matched, self.reference_found),
            "no_face_reference": self.no_face_reference.clone(),
            "no_face_probe": self.no_face_probe.clone(),
            "pairs": self.pairs.clone(),
        }


class IdentityRetrieval(Metric):
    """Top-1 retrieval: is each probe's nearest gallery entry (by the recognizer's rule) of the probe's
    identity? The gallery is every reference seen (e.g. all originals, several per identity).

    Probes without a face count as misses; gallery entries without a face are left out. ``chance`` is
    the hit rate of a random guess from the gallery (mean share of the probe's identity in it).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, rule: Verification | float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rule = as_verification(rule)
        for name in ("probe", "gallery", "labels", "probe_found", "gallery_found"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(
        self,
        probe: Tensor,
        gallery: Tensor,
        labels: Tensor,
        probe_found: Tensor | None = None,
        gallery_found: Tensor | None = None,
    ) -> None:
        """``probe[i]`` was made from ``gallery[i]``, whose identity is ``labels[i]``."""
        n = probe.shape[0]
        if gallery.shape != probe.shape or labels.shape != (n,):
            raise ValueError("expected probe and gallery (B, D) and labels (B,)")
        self.probe.append(probe.detach().double())
        self.gallery.append(gallery.detach().double())
        self.labels.append(labels.detach().long().to(probe.device))
        self.probe_found.append(_mask(probe_found, n, probe.device))
        self.gallery_found.append(_mask(gallery_found, n, probe.device))

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.labels, list) and not self.labels:
            nan = torch.tensor(float("nan"))
            return {"top1": nan, "chance": nan, "gallery": torch.tensor(0)}
        probe, gallery = dim_zero_cat(self.probe), dim_zero_cat(self.gallery)
        labels = dim_zero_cat(self.labels)
        probe_found = dim_zero_cat(self.probe_found).bool()
        gallery_found = dim_zero_cat(self.gallery_found).bool()
        gallery, gallery_labels = gallery[gallery_found], labels[gallery_found]
        if gallery.shape[0] == 0:
            return {"top1": torch.tensor(float("nan")), "chance": torch.tensor(float("nan")),
                    "gallery": torch.tensor(0)}
        # Probes whose identity is not in the gallery at all cannot be retrieved: they are left out.
        present = (labels[:, None] == gallery_labels[None, :]).any(dim=1)
        nearest = self.rule.score_matrix(probe, gallery).argmax(dim=1)
        hits = (gallery_labels[nearest] == labels) & probe_found & present
        share = (labels[:, None] == gallery_labels[None, :]).double().mean(dim=1)
        return {
            "top1": _ratio(hits.sum(), present.sum()),
            "chance": share[present].mean() if present.any() else torch.tensor(float("nan")),
            "gallery": torch.tensor(gallery.shape[0]),
        }


class PairwiseIdentityDiversity(Metric):
    """K anonymizations of each face (B, K, D): mean cosine over all K(K-1)/2 pairs per face (low = the
    keys give different identities) and the share of pairs the recognizer calls one person."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, rule: Verification | float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rule = as_verification(rule)
        self.add_state("cos_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("pairs", "same", "no_face"):
            self.add_state(name, torch.tensor(0), dist_reduce_fx="sum")

    def update(self, embeddings: Tensor, found: Tensor | None = None) -> None:
        if embeddings.dim() != 3 or embeddings.shape[1] < 2:
            raise ValueError(f"expected embeddings (B, K >= 2, D), got {tuple(embeddings.shape)}")
        b, k, _ = embeddings.shape
        ok = torch.ones(b, k, dtype=torch.bool, device=embeddings.device) if found is None else found.bool()
        first, second = torch.triu_indices(k, k, offset=1, device=embeddings.device)
        a, c = embeddings[:, first], embeddings[:, second]  # (B, P, D)
        valid = ok[:, first] & ok[:, second]
        cos = torch.nn.functional.cosine_similarity(a.double(), c.double(), dim=-1)
        self.cos_sum += cos[valid].sum()
        self.same += (self.rule.same(a, c) & valid).sum()
        self.pairs += valid.sum()
        self.no_face += (~ok).sum()

    def compute(self) -> dict[str, Tensor]:
        return {
            "cos": _ratio(self.cos_sum, self.pairs),
            "same_person_rate": _ratio(self.same, self.pairs),
            "no_face": self.no_face.clone(),
        }
