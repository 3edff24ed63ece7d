"""Headline scores of a trained anonymizer on held-out faces, judged by an independent recognizer.

The judge is a recognizer trained separately from the identity encoder the model was trained with, so
the scores are not measured by the network the losses optimised. (The full torchmetrics suite with
re-identification rates, security and utility metrics is ``ifadit.metrics``, once it lands.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from ifadit.anonymizer import IFADIT
from ifadit.keys import SecretKey
from ifadit.nets import IdentityEncoder
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


def _psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB on [0, 1] images."""
    mse = ((a - b) / 2).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return -10 * torch.log10(mse)


@torch.no_grad()
def evaluate_headline(
    model: IFADIT,
    judge: IdentityEncoder,
    batches: Iterable[dict[str, Tensor]],
    secret: SecretKey,
    grid_path: str | Path | None = None,
    grid_rows: int = 8,
) -> HeadlineScores:
    """Anonymize every image with ``secret``, recover it, recover it with a wrong key, anonymize it with a
    second key; average the judge's identity cosines and the PSNRs over all images."""
    model.eval()
    judge.eval()
    wrong = SecretKey.generate()
    other = SecretKey.generate()
    sums: dict[str, float] = {}
    count = 0
    latent_error = 0.0
    grid_columns: list[Tensor] | None = None
    for batch in batches:
        x = batch["image"]
        n = x.shape[0]
        cond = model.key_scheme(secret, batch_size=n)
        anonymized, recovered = model.anonymize_and_recover(x, cond)
        wrong_key = model.recover(anonymized.image, model.key_scheme(wrong, batch_size=n))
        second = model.anonymize(x, model.key_scheme(other, batch_size=n))
        reconstruction = model.reconstruct(x)
        z_back = model.flow.inverse(anonymized.anonymized_identity, cond)
        latent_error = max(latent_error, (z_back - anonymized.identity).abs().max().item())
        j = {
            name: judge(img)
            for name, img in (
                ("x", x),
                ("anon", anonymized.image),
                ("rec", recovered.image),
                ("wrong", wrong_key.image),
                ("second", second.image),
                ("recon", reconstruction),
            )
        }
        values = {
            "judge_cos_original_anonymized": F.cosine_similarity(j["x"], j["anon"]),
            "judge_cos_original_recovered": F.cosine_similarity(j["x"], j["rec"]),
            "judge_cos_original_wrong_key": F.cosine_similarity(j["x"], j["wrong"]),
            "judge_cos_between_two_keys": F.cosine_similarity(j["anon"], j["second"]),
            "judge_cos_original_reconstruction": F.cosine_similarity(j["x"], j["recon"]),
            "recovery_psnr_db": _psnr(recovered.image, x),
            "anonymized_psnr_db": _psnr(anonymized.image, x),
        }
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value.sum().item()
        count += n
        if grid_columns is None:
            grid_columns = [
                t[:grid_rows] for t in (x, anonymized.image, second.image, recovered.image, wrong_key.image)
            ]
    if count == 0:
        raise ValueError("no images to evaluate")
    if grid_path is not None and grid_columns is not None:
        save_grid(grid_columns, grid_path)
    return HeadlineScores(
        images=count,
        key_fingerprint=secret.fingerprint,
        latent_roundtrip_max_error=latent_error,
        **{name: total / count for name, total in sums.items()},
    )


def save_grid(columns: list[Tensor], path: str | Path) -> Path:
    """Rows of faces, one column per variant, as a PNG (images in [-1, 1])."""
    rows = torch.stack(columns, dim=1).flatten(0, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image((rows.clamp(-1, 1) + 1) / 2, path, nrow=len(columns), padding=2)
    return path


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


__all__ = ["HeadlineScores", "evaluate_headline", "format_scores", "save_grid", "write_scores"]
