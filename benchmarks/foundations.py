"""How good the SynthFaces foundations are, on identities none of them was trained on.

The foundations train on data seed 1; this scores them on the quickstart's test identities (data seed 0,
the faces every quickstart number is measured on):

- each recognizer (the identity encoder, the judge): mean cosine of genuine pairs (two images of one
  identity) and impostor pairs, the verification equal error rate over all pairs (torchmetrics ROC), and
  how many directions its embedding uses — the principal directions holding 90 % of the variance and the
  participation ratio ``(sum of variances)^2 / sum of squared variances``. A key can only move an identity
  in directions the recognizers notice; the goal is a ratio of at least 15 and an EER of at most 2 %.
  Which identity parameters it sees: a ridge regression from the embedding to each of the 53 identity
  parameters, fitted on the quickstart's training identities (also unseen by the foundations) and scored
  (R²) on the test identities.
- the renderer (generator + parameter mapper): PSNR and SSIM of ``G(P(parameters))`` against the rendered
  image, and the judge's cosine between the two;
- phase 1 (attribute encoder + mapper on the identity encoder and the renderer): the same for the
  reconstruction ``G(M(E_id(x), E_attr(x)))`` of the image alone, without its parameters.

Run: ``OMP_NUM_THREADS=2 python benchmarks/foundations.py --out benchmarks/results/foundations.md``
(defaults: the foundation runs' last checkpoints under outputs/checkpoints/ifadit; ``--shipped`` scores the
files shipped in ifadit/foundations instead).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from machine import describe, publish  # benchmarks/ is on sys.path when a script runs
from torch import Tensor
from torchmetrics.functional.classification import binary_roc

from ifadit.data.synthfaces import IDENTITY_NAMES, SynthFaces
from ifadit.foundations import FOUNDATIONS
from ifadit.lightning_cli import cli_main, last_checkpoint
from ifadit.weights import load_component_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "outputs/checkpoints/ifadit"
RECIPES = ROOT / "recipes/foundations"
RECOGNIZER_RECIPES = {"identity-encoder": "recognizer", "judge": "judge"}


def verification(embeddings: Tensor, labels: Tensor) -> dict[str, float]:
    """Genuine/impostor means, EER and the embedding's effective dimension, over all pairs."""
    unit = F.normalize(embeddings, dim=1)
    cos = unit @ unit.T
    same = labels[:, None] == labels[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    scores, genuine = cos[upper], same[upper]
    fpr, tpr, _ = binary_roc(scores, genuine.long())
    eer_at = torch.argmin((fpr - (1 - tpr)).abs())
    variance = torch.linalg.svdvals(unit - unit.mean(dim=0)).pow(2)
    share = variance.cumsum(0) / variance.sum()
    return {
        "genuine": scores[genuine].mean().item(),
        "impostor": scores[~genuine].mean().item(),
        "eer": ((fpr[eer_at] + 1 - tpr[eer_at]) / 2).item(),
        "dims_90": int((share < 0.9).sum().item()) + 1,
        "participation": (variance.sum().pow(2) / variance.pow(2).sum()).item(),
    }


def parameters_read(fit: tuple[Tensor, Tensor], score: tuple[Tensor, Tensor], ridge: float = 1.0) -> Tensor:
    """R² per parameter on ``score`` of a ridge regression (unit embedding -> parameter) fitted on ``fit``;
    each is an (embeddings, parameters) pair."""

    def design(embeddings: Tensor) -> Tensor:
        return torch.cat([F.normalize(embeddings, dim=1), torch.ones(len(embeddings), 1)], dim=1).double()

    a, b = design(fit[0]), fit[1].double()
    weights = torch.linalg.solve(a.T @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype), a.T @ b)
    truth = score[1].double()
    residual = (design(score[0]) @ weights - truth).pow(2).sum(0)
    return (1 - residual / (truth - truth.mean(0)).pow(2).sum(0)).float()


@torch.no_grad()
def embed(encoder: torch.nn.Module, images: Tensor, batch: int = 200) -> Tensor:
    return torch.cat([encoder(part) for part in images.split(batch)])


def _last(run: str) -> Path:
    """The run's newest ``last*.ckpt``, the checkpoint ``--ckpt_path last`` resumes."""
    found = last_checkpoint(RUNS / run)
    if found is None:
        raise SystemExit(f"error: no last checkpoint in {RUNS / run}: train recipes/foundations first")
    return found


def _foundation_task(recipe: str, shipped: bool) -> torch.nn.Module:
    """The task a foundation recipe builds, with its run's last checkpoint or the shipped files' weights."""
    config = ["--config", str(RECIPES / f"{recipe}.yaml"), "--trainer.logger", "false"]
    task = cli_main(config, run=False).model
    if shipped:
        for foundation in FOUNDATIONS:
            if foundation.recipe == f"recipes/foundations/{recipe}.yaml":
                load_component_checkpoint(task.get_submodule(foundation.prefix.rstrip(".")), foundation.name)
    else:
        task.load_components(_last(f"foundations-{recipe}"))
    return task.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shipped", action="store_true", help="score the shipped files, not the runs")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["identity-encoder", "judge", "renderer", "phase1"],
                        help="foundations not to score (e.g. one still training)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = SynthFaces(ROOT / "data/synthfaces", "test", size=64, num_identities=1000, images_per_identity=6)
    images, labels = test.images.float().div(127.5).sub(1.0), test.identity_labels
    probe = SynthFaces(ROOT / "data/synthfaces", "train", size=64, num_identities=1000, images_per_identity=6)
    probe_images = probe.images.float().div(127.5).sub(1.0)
    identity_count = len(IDENTITY_NAMES)
    source = "shipped files (ifadit/foundations)" if args.shipped else "training runs' last.ckpt"
    lines = [
        f"Quickstart test identities (data seed 0): {len(labels.unique())} identities, {len(labels)} images, "
        f"64 px. Foundations: {source}. Machine: {describe(args.threads)}.",
        "",
        "| recognizer | genuine pairs | impostor pairs | EER | directions for 90 % | participation ratio "
        "| identity parameters read (R² ≥ 0.5) | worst read |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    judge = None
    for name in ("identity-encoder", "judge"):
        if name in args.skip:
            continue
        encoder = _foundation_task(RECOGNIZER_RECIPES[name], args.shipped).identity_encoder
        judge = encoder if name == "judge" else judge
        embeddings = embed(encoder, images)
        v = verification(embeddings, labels)
        r2 = parameters_read(
            (embed(encoder, probe_images), probe.parameters[:, :identity_count]),
            (embeddings, test.parameters[:, :identity_count]),
        )
        worst = ", ".join(f"{IDENTITY_NAMES[i]} {r2[i]:.2f}" for i in r2.argsort()[:3].tolist())
        lines.append(f"| {name} | {v['genuine']:.3f} | {v['impostor']:.3f} | {100 * v['eer']:.2f} % | "
                     f"{v['dims_90']} | {v['participation']:.1f} | {int((r2 >= 0.5).sum())} of {len(r2)} "
                     f"| {worst} |")
    rows = []
    if "renderer" not in args.skip:
        renderer = _foundation_task("renderer", args.shipped)
        mapper, generator = renderer.parameter_mapper, renderer.generator
        with torch.no_grad():
            renders = torch.cat([generator(mapper(p)) for p in test.parameters.split(100)])
        rows.append(("renderer: G(P(parameters))", renders))
    if "phase1" not in args.skip:
        model = _foundation_task("disentangle", args.shipped).model
        with torch.no_grad():
            renders = torch.cat([model.reconstruct(part) for part in images.split(100)])
        rows.append(("phase 1: G(M(E_id(x), E_attr(x)))", renders))
    if rows:
        lines += ["", "| on unseen identities | PSNR | SSIM | judge cos (render, image) |",
                  "|---|---:|---:|---:|"]
    for row, renders in rows:
        renders = renders.clamp(-1, 1)
        psnr = kornia.metrics.psnr((renders + 1) / 2, (images + 1) / 2, 1.0).item()
        ssim = kornia.metrics.ssim((renders + 1) / 2, (images + 1) / 2, 7).mean().item()
        cos = "–"
        if judge is not None:
            cos = f"{F.cosine_similarity(embed(judge, renders), embed(judge, images)).mean().item():.3f}"
        lines.append(f"| {row} | {psnr:.2f} dB | {ssim:.3f} | {cos} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
