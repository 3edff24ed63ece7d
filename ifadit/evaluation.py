"""Headline scores of a trained anonymizer on held-out faces, judged by an independent recognizer.

The judge is a recognizer trained separately from the identity encoder the model was trained with, so
the scores are not measured by the network the losses optimised. The numbers come from the metrics suite
(``ifadit.metrics``); ``ifadit evaluate`` prints all of them, ``ifadit score`` just these.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from ifadit.anonymizer import IFADIT
from ifadit.evaluate import headline, run_suite
from ifadit.grids import save_labelled_grid
from ifadit.keys import SecretKey
from ifadit.nets import IdentityEncoder
from ifadit.recognizers import EncoderRecognizer, Recognizer, Verification
from ifadit.text import format_rows


@dataclass
class HeadlineScores:
    images: int
    key_fingerprint: str
    judge_cos_original_anonymized: float  # want low
    judge_cos_original_recovered: float  # want high
    judge_cos_original_wrong_key: float  # want low
    judge_cos_between_two_keys: float  # want low
    judge_cos_original_reconstruction: float  # the ceiling recovery can reach
    recovery_psnr_db: float
    anonymized_psnr_db: float
    latent_roundtrip_max_error: float  # the flow alone, in identity space


@torch.no_grad()
def evaluate_headline(
    model: IFADIT,
    judge: Recognizer | IdentityEncoder,
    batches: Iterable[dict[str, Tensor]],
    secret: SecretKey,
    grid_path: str | Path | None = None,
    grid_rows: int = 8,
) -> HeadlineScores:
    """Anonymize every image with ``secret``, recover it, recover it with wrong keys, anonymize it with a
    second key, and average the judge's identity cosines and the PSNRs over all images. ``judge``: a
    recognizer (``ifadit.recognizers.build_recognizer``) or a bare identity encoder.

    A view on the metrics suite (:func:`ifadit.evaluate.run_suite`), so ``ifadit score`` and
    ``ifadit evaluate`` give the same numbers; wrong and second keys are the suite's fixed public keys
    (one wrong key per image), so the numbers repeat from run to run."""
    report = run_suite(
        model,
        batches,
        secret,
        {"judge": _nominal_threshold(judge)},
        detector=False,
        fid=False,
        keep_samples=grid_rows,
    )
    if grid_path is not None and report.samples:
        s = report.samples
        key_a, key_b = s["anonymized"][:, 0], s["anonymized"][:, 1]
        columns = {"original": s["original"], "key A": key_a, "key B": key_b, "recovered": s["recovered"],
                   "wrong key": s["wrong_key"]}
        save_labelled_grid(columns, grid_path)
    values = headline(report.results, "judge")
    return HeadlineScores(
        images=int(report.meta["images"]),
        key_fingerprint=secret.fingerprint,
        **{name: float(value) for name, value in values.items()},
    )


def _nominal_threshold(judge: Recognizer | IdentityEncoder) -> Recognizer:
    """The suite wants a threshold; the headline reads only cosines, so a judge without one gets a nominal
    0.5 (on a copy: the caller's recognizer keeps none)."""
    if not isinstance(judge, Recognizer):
        return EncoderRecognizer(judge, threshold=0.5)
    if judge.verification is None:
        judge = copy.copy(judge)
        judge.verification = Verification(0.5)
    return judge


def write_scores(scores: HeadlineScores, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(scores), indent=2) + "\n")
    return path


def format_scores(scores: HeadlineScores) -> str:
    rows = [
        ("held-out test images", f"{scores.images}"),
        ("key fingerprint", scores.key_fingerprint),
        ("judge cos(original, anonymized)", f"{scores.judge_cos_original_anonymized:+.3f}  (goal <= 0.3)"),
        ("judge cos(original, recovered)", f"{scores.judge_cos_original_recovered:+.3f}  (goal >= 0.8)"),
        (
            "judge cos(original, wrong-key recovery)",
            f"{scores.judge_cos_original_wrong_key:+.3f}  (goal <= 0.3)",
        ),
        ("judge cos(key A anonymized, key B)", f"{scores.judge_cos_between_two_keys:+.3f}  (goal <= 0.5)"),
        ("judge cos(original, reconstruction)", f"{scores.judge_cos_original_reconstruction:+.3f}"),
        ("recovery PSNR", f"{scores.recovery_psnr_db:.2f} dB"),
        ("anonymized PSNR (vs original)", f"{scores.anonymized_psnr_db:.2f} dB"),
        ("flow round-trip max error", f"{scores.latent_roundtrip_max_error:.1e}"),
    ]
    return format_rows(rows)


__all__ = ["HeadlineScores", "evaluate_headline", "format_scores", "write_scores"]
