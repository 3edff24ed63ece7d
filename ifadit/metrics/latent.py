"""Flow-level metrics: the latent round-trip error, and whether correct-key recoveries can be told from
wrong-key ones (key indistinguishability, an AUROC)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

from ifadit.flows import KeyedFlow


class LatentRoundTripError(Metric):
    """|F^-1(F(z, c), c) - z| in identity space: the flow's own exactness (max and mean absolute error)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("max_abs", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")
        self.add_state("abs_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("elements", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, z: Tensor, z_back: Tensor) -> None:
        if z.shape != z_back.shape:
            raise ValueError(
                f"expected two tensors of one shape, got {tuple(z.shape)} and {tuple(z_back.shape)}"
            )
        error = (z_back.double() - z.double()).abs()
        if error.numel():
            self.max_abs = torch.maximum(self.max_abs, error.max())
        self.abs_sum += error.sum()
        self.elements += error.numel()

    def compute(self) -> dict[str, Tensor]:
        mean = self.abs_sum / self.elements if self.elements > 0 else torch.tensor(float("nan"))
        return {"max_abs": self.max_abs.clone(), "mean_abs": mean}


class KeyIndistinguishability(Metric):
    """AUROC of a score that should separate correct-key recoveries (label 1) from wrong-key ones (label 0).

    0.5: the score cannot tell the correct key (ideal for security); 1.0 or 0.0: it always can (either
    direction leaks). Scores that are not finite are left out and counted (``nonfinite``).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", [], dist_reduce_fx="cat")
        self.add_state("labels", [], dist_reduce_fx="cat")

    def update(self, correct: Tensor, wrong: Tensor) -> None:
        correct, wrong = correct.detach().double().reshape(-1), wrong.detach().double().reshape(-1)
        self.scores.append(torch.cat([correct, wrong]))
        self.labels.append(
            torch.cat([torch.ones_like(correct, dtype=torch.long), torch.zeros_like(wrong, dtype=torch.long)])
        )

    def compute(self) -> dict[str, Tensor]:
        nan = torch.tensor(float("nan"))
        if isinstance(self.scores, list) and not self.scores:
            return {"auc": nan, "nonfinite": torch.tensor(0)}
        scores, labels = dim_zero_cat(self.scores), dim_zero_cat(self.labels)
        finite = torch.isfinite(scores)
        scores, labels = scores[finite], labels[finite]
        nonfinite = torch.tensor(int((~finite).sum()))
        if scores.numel() == 0 or labels.min() == labels.max():
            return {"auc": nan, "nonfinite": nonfinite}
        # binary_auroc reads values outside [0, 1] as logits and applies a sigmoid, which saturates on
        # log-densities of hundreds of nats and would tie every score; AUROC depends on the order only,
        # so map the scores affinely onto [0, 1] first.
        span = scores.max() - scores.min()
        unit = (scores - scores.min()) / span if span > 0 else torch.zeros_like(scores)
        return {"auc": binary_auroc(unit, labels), "nonfinite": nonfinite}


def flow_density(flow: KeyedFlow, z: Tensor, cond: Tensor) -> Tensor:
    """log N(F(z, c); 0, I) + log|det dF/dz|: the density the flow gives ``z`` under key condition ``c``."""
    return flow.log_prob(z, cond)


def sphere_score(z: Tensor) -> Tensor:
    """How close ``z`` is to the unit sphere identity encoders map to: -| ||z|| - 1 | (higher = more like a
    real identity vector)."""
    return -(z.double().norm(dim=1) - 1.0).abs()


__all__ = ["KeyIndistinguishability", "LatentRoundTripError", "flow_density", "sphere_score"]
