"""One key, many faces: what an attacker who knows some of the originals learns about the rest.

The attacker holds the model and the faces anonymized under one user key, and knows the original of
``--known`` of them (a published group photo whose members they know, say). They fit an affine least-squares
map from the identity encoder's reading of each known anonymized face to the original's identity, apply it to
the other anonymized faces, and render the result with the attributes read from the anonymized face, as
recovery does. For the ``whitened-rotation`` flow, whose mean, principal basis and scales are in the model,
the attacker also fits just the key's map of the whitened principal coordinates (``rank × rank`` numbers:
a linear key transform is learned from about as many pairs as it turns coordinates). The right key's
recovery and chance are printed next to it. Judged on the test faces not among the known ones, for
``--keys`` fresh random keys.

Run: ``OMP_NUM_THREADS=2 python benchmarks/known_pairs.py --out benchmarks/results/known_pairs.md``
(defaults: the quickstart's final checkpoint and the shipped judge).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from key_collisions import add_model_and_judge_arguments, judge_encoder  # benchmarks/ is on sys.path
from machine import describe, publish, shown_path
from torch import Tensor

from ifadit.cli import _build_task
from ifadit.flows.whitened import WhitenedRotationFlow
from ifadit.keys import SecretKey
from ifadit.nets.image import as_stored


def affine_fit(inputs: Tensor, targets: Tensor, ridge: float = 1e-3) -> Tensor:
    """Ridge-regularised affine least squares: weights (dim + 1, dim) with a bias row."""
    design = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)
    gram = design.T @ design + ridge * torch.eye(design.shape[1])
    return torch.linalg.solve(gram, design.T @ targets)


def whitened_attack(flow: WhitenedRotationFlow, reading: Tensor, known: Tensor, n: int) -> Tensor:
    """The flow's whitened principal coordinates of every reading, mapped by the linear map fitted on the
    first ``n`` (reading, original) pairs, put back in place of the reading's own."""
    coordinates = flow.whitened(reading)
    fitted = torch.linalg.lstsq(coordinates[:n], flow.whitened(known[:n])).solution
    return flow.shift_whitened(reading, coordinates @ fitted - coordinates)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_and_judge_arguments(parser)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--known", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    task, datamodule = _build_task(args.config, args.ckpt_path, strict=True)
    model, judge = task.model.eval(), judge_encoder(args.judge)
    datamodule.setup("test")
    batches = list(datamodule.test_dataloader())
    order = torch.randperm(sum(len(batch["image"]) for batch in batches))  # known faces from every identity
    x = torch.cat([batch["image"] for batch in batches])[order]
    people = torch.cat([batch["identity"] for batch in batches])[order][max(args.known):]
    held_out = slice(max(args.known), None)
    real = torch.cat([judge(part) for part in x[held_out].split(100)])
    identities = torch.cat([model.identity_encoder(part) for part in x.split(100)])
    attacks = {f"{n} known faces, affine": (n, False) for n in args.known}
    if isinstance(model.flow, WhitenedRotationFlow):
        rank = model.flow.rank
        attacks |= {f"{n} known faces, the flow's basis": (n, True) for n in args.known if n >= rank}
    rows: dict[str, list[float]] = {"right key": [], **{name: [] for name in attacks}}
    unit = F.normalize(real, dim=1)
    chance = (unit @ unit.T)[people[:, None] != people[None, :]].mean().item()  # two different people
    for _ in range(args.keys):
        cond = model.key_scheme(SecretKey.generate(), batch_size=1)
        stored, readings, attributes, recovered = [], [], [], []
        for part in x.split(100):
            image = as_stored(model.anonymize(part, cond.expand(len(part), -1)).image)
            stored.append(image)
            readings.append(model.identity_encoder(image))
            attributes.append(model.attribute_encoder(image))
            recovered.append(model.recover(image, cond.expand(len(part), -1)).image)
        reading, attribute = torch.cat(readings), torch.cat(attributes)
        rows["right key"].append(
            F.cosine_similarity(judge(torch.cat(recovered)[held_out]), real).mean().item()
        )
        for name, (n, structured) in attacks.items():
            if structured:
                guess = whitened_attack(model.flow, reading, identities, n)[held_out]
            else:
                weights = affine_fit(reading[:n], identities[:n])
                guess = torch.cat([reading[held_out], torch.ones(len(real), 1)], dim=1) @ weights
            pieces = zip(guess.split(100), attribute[held_out].split(100), strict=True)
            render = torch.cat([model.render(z, a) for z, a in pieces])
            rows[name].append(F.cosine_similarity(judge(render), real).mean().item())
    lines = [
        f"{args.keys} fresh random keys; {len(real)} test faces judged (the known ones excluded); model "
        f"{shown_path(args.ckpt_path)}; judged by {args.judge}. Machine: {describe(args.threads)}.",
        f"Chance (two different test identities): {chance:.3f}.",
        "",
        "| recovery of the other faces | judge cosine to the original, min | max |",
        "|---|---:|---:|",
        *(f"| {name} | {min(v):.3f} | {max(v):.3f} |" for name, v in rows.items()),
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
