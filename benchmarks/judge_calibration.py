"""What a judge's cosine means on SynthFaces: the scale the quickstart's four goals are measured on.

For each recognizer, on the test identities (never trained on): the mean cosine between two different images
of the same identity (genuine pairs) and of different identities (impostors), and a phase-1 model's
reconstruction against its own original, against the other images of the same identity and against
impostors. A recovered face that scores above the genuine-pair cosine is closer to its original than a
second photo of the same person is: that much of the score is pose, light and expression, not identity.
Also the number of principal directions holding 90 % of the embeddings' variance on those images, and their
participation ratio ``(sum of variances)^2 / sum of squared variances``: about how many directions a key
transform can move an identity in that this recognizer notices. On the judge the quickstart used to train
(measured before the shipped judge replaced it): 7 directions and a ratio of 3.9, against 21 and 11.7 for the
model's own encoder (docs/research.md, "Where recovery loses the identity").

Run: ``OMP_NUM_THREADS=1 python benchmarks/judge_calibration.py`` (defaults: the quickstart checkpoints, the
shipped judge ``synthfaces64-judge`` and the model's own identity encoder; ``--judge NAME_OR_CKPT``,
repeatable, names the judges as in ``ifadit score``). Prints a table and writes ``--out`` (Markdown) when
given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from key_collisions import judge_encoder  # benchmarks/ is on sys.path when a script runs
from machine import describe, publish, shown_path
from torch import Tensor

from ifadit.cli import _build_task
from ifadit.nets import IdentityEncoder
from ifadit.recognizers import recognizer_label

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "outputs/checkpoints/ifadit"


@torch.no_grad()
def embed(encoder: IdentityEncoder, images: Tensor, batch: int = 100) -> Tensor:
    return F.normalize(torch.cat([encoder(part) for part in images.split(batch)]), dim=1)


def calibration(originals: Tensor, renders: Tensor, labels: Tensor) -> dict[str, float]:
    """Mean cosines over pairs of unit embeddings: ``originals`` against themselves and ``renders``
    (row i rendered from original i)."""
    same = labels[:, None] == labels[None, :]
    other_image = same & ~torch.eye(len(labels), dtype=torch.bool)
    real = originals @ originals.T
    rendered = renders @ originals.T
    centred = originals - originals.mean(dim=0)
    variance = torch.linalg.svdvals(centred).pow(2)
    share = variance.cumsum(0) / variance.sum()
    return {
        "genuine": real[other_image].mean().item(),
        "impostor": real[~same].mean().item(),
        "render_own_original": rendered.diagonal().mean().item(),
        "render_same_identity": rendered[other_image].mean().item(),
        "render_impostor": rendered[~same].mean().item(),
        "dims_90": int((share < 0.9).sum().item()) + 1,
        "participation": (variance.sum().pow(2) / variance.pow(2).sum()).item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "recipes/quickstart/compensator.yaml"))
    parser.add_argument("--ckpt_path", default=str(CKPT / "quickstart-compensator/last.ckpt"))
    parser.add_argument("--judge", action="append", metavar="NAME_OR_CKPT",
                        help="a judge, repeatable: a registered name or CKPT:config=RECIPE of a recognizer "
                        "ifadit trained (default: the shipped SynthFaces judge, synthfaces64-judge)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    judges = args.judge or ["synthfaces64-judge"]

    task, datamodule = _build_task(args.config, args.ckpt_path, strict=True)
    model = task.model.eval()
    datamodule.setup("test")
    batches = list(datamodule.test_dataloader())
    images = torch.cat([b["image"] for b in batches])
    labels = torch.cat([torch.as_tensor(b["identity"]) for b in batches])
    with torch.no_grad():
        renders = torch.cat([model.reconstruct(part) for part in images.split(100)])

    encoders = {}
    for spec in judges:
        encoders[recognizer_label(spec)] = judge_encoder(spec)
    encoders["the model's identity encoder"] = model.identity_encoder
    lines = [
        f"Test identities: {len(labels.unique())}, images: {len(labels)}. Reconstructions by "
        f"{shown_path(args.ckpt_path)}.",
        f"Machine: {describe(args.threads)}.",
        "",
        "| recognizer | genuine pairs | impostors | reconstruction vs its original "
        "| vs same identity's other images | vs impostors | directions for 90 % | participation ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, encoder in encoders.items():
        c = calibration(embed(encoder, images), embed(encoder, renders), labels)
        lines.append(
            f"| {name} | {c['genuine']:.3f} | {c['impostor']:.3f} | {c['render_own_original']:.3f} | "
            f"{c['render_same_identity']:.3f} | {c['render_impostor']:.3f} | {c['dims_90']} | "
            f"{c['participation']:.1f} |"
        )
    publish(lines, args.out)


if __name__ == "__main__":
    main()
