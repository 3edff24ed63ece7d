"""How far recovery gets when the key transform stretches no error, and what that costs in key diversity.

A trained flow's inverse magnifies the error of the identity read back from the anonymized face (quickstart
checkpoints: after the compensator the estimate is at cosine 0.80-0.87 to the flow output, after the inverse
0.40-0.73 to the original; ``key_collisions.py`` reports both, and docs/research.md, "Where recovery loses the
identity", has the diagnosis). Here the flow is replaced by keyed maps that cannot magnify it: isometries of
the centred principal coordinates of real identities that also keep their distribution, so the anonymized
identity is one the generator was trained to render:

* ``flips``: each principal coordinate's sign, a key bit each;
* ``reflections``: in each plane of two adjacent principal directions, the reflection about a keyed axis;
* ``whitened-rotation R``: the registered flow of that name (the quickstart's): a keyed rotation of the top
  ``R`` *whitened* principal coordinates, which keeps their distribution and turns every face to an
  orthogonal one (random key conditions; the inverse is its transpose, not the map itself).

No training: the principal directions and an affine least-squares compensator (reading ``z_anon`` back from
the stored 8-bit anonymized face) are fitted on training faces under random keys; ``none`` (no transform, the
same compensator fit) is the ceiling any key transform is bounded by. Each key is scored with the judge on
the test faces like ``key_collisions.py`` (the next key of the list as wrong and second key). The goals that
fail show which judge-visible directions such keys can move: the share of the variance in the top principal
directions is printed with the table.

Run: ``OMP_NUM_THREADS=2 python benchmarks/keyed_isometries.py`` (defaults: the quickstart checkpoints,
the shipped judge ``synthfaces64-judge``, 8 keys). Prints a table and writes ``--out`` (Markdown) when given.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from key_collisions import (  # benchmarks/ is on sys.path
    GOALS,
    _meets,
    add_model_and_judge_arguments,
    judge_encoder,
)
from machine import describe, publish
from torch import Tensor

from ifadit.anonymizer import IFADIT
from ifadit.cli import _build_task
from ifadit.flows.whitened import WhitenedRotationFlow
from ifadit.keycheck import encode
from ifadit.nets import IdentityEncoder
from ifadit.nets.image import as_stored
from ifadit.recognizers import recognizer_label

FAMILIES = ("none", "flips", "reflections", *(f"whitened-rotation {rank}" for rank in (8, 12, 16)))


class PrincipalIsometry:
    """Keyed isometries of ``z`` about the mean of real identities, in their principal basis."""

    def __init__(self, identities: Tensor, family: str) -> None:
        self.mean = identities.mean(dim=0)
        _, singular, vh = torch.linalg.svd(identities - self.mean, full_matrices=False)
        self.basis = vh.T  # (dim, dim), columns by decreasing variance
        self.variance = singular.pow(2) / (len(identities) - 1)
        self.family = family
        self.dim = identities.shape[1]

    def draw(self, generator: torch.Generator, count: int = 1) -> Tensor:
        """Keys: signs (count, dim) for ``flips``, axis angles (count, dim // 2) for ``reflections``."""
        if self.family == "flips":
            return torch.randint(0, 2, (count, self.dim), generator=generator).float() * 2 - 1
        if self.family == "reflections":
            return torch.rand(count, self.dim // 2, generator=generator) * math.pi
        return torch.zeros(count, 0)

    def __call__(self, z: Tensor, key: Tensor) -> Tensor:
        """Every map here is its own inverse, so this both anonymizes and recovers."""
        coords = (z - self.mean) @ self.basis
        if self.family == "flips":
            coords = coords * key
        elif self.family == "reflections":
            u, v = coords[:, 0::2], coords[:, 1::2]
            c, s = torch.cos(2 * key), torch.sin(2 * key)
            coords = torch.stack([c * u + s * v, s * u - c * v], dim=-1).flatten(1)
        return self.mean + coords @ self.basis.T

    inverse = __call__


class WhitenedRotation:
    """The ``whitened-rotation`` flow of ``rank`` coordinates, fitted to the same identities."""

    def __init__(self, identities: Tensor, rank: int) -> None:
        self.flow = WhitenedRotationFlow(identities.shape[1], cond_dim=64, rank=rank)
        self.flow.fit_identities(identities)

    def draw(self, generator: torch.Generator, count: int = 1) -> Tensor:
        return torch.randn(count, self.flow.cond_dim, generator=generator)

    def __call__(self, z: Tensor, key: Tensor) -> Tensor:
        return self.flow(z, key)[0]

    def inverse(self, z: Tensor, key: Tensor) -> Tensor:
        return self.flow.inverse(z, key)


KeyedMap = PrincipalIsometry | WhitenedRotation


def keyed_map(identities: Tensor, family: str) -> KeyedMap:
    if family.startswith("whitened-rotation"):
        return WhitenedRotation(identities, int(family.split()[-1]))
    return PrincipalIsometry(identities, family)


@torch.no_grad()
def fit_compensator(
    model: IFADIT, identities: Tensor, attributes: Tensor, transform: KeyedMap, seed: int = 999
) -> Callable[[Tensor], Tensor]:
    """Affine least squares from the identity encoder's reading of a stored render to its ``z_anon``."""
    generator = torch.Generator().manual_seed(seed)
    targets, readings = [], []
    for z, a in zip(identities.split(128), attributes.split(128), strict=True):
        z_anon = transform(z, transform.draw(generator, len(z)))
        targets.append(z_anon)
        readings.append(model.identity_encoder(as_stored(model.render(z_anon, a))))
    reading = torch.cat(readings)
    design = torch.cat([reading, torch.ones(len(reading), 1)], 1)
    weights = torch.linalg.lstsq(design, torch.cat(targets)).solution
    return lambda embedding: torch.cat([embedding, torch.ones(len(embedding), 1)], 1) @ weights


@torch.no_grad()
def score(
    model: IFADIT,
    judge: IdentityEncoder,
    test: tuple[Tensor, Tensor, Tensor],
    transform: KeyedMap,
    compensator: Callable[[Tensor], Tensor],
    key: Tensor,
    next_key: Tensor,
) -> dict[str, float]:
    """``test``: the test faces' identities, attributes and judge embeddings."""
    sums: dict[str, float] = {}
    for identity, attributes, j_x in zip(*(part.split(100) for part in test), strict=True):
        n = len(identity)
        z_anon = transform(identity, key.expand(n, -1))
        stored = as_stored(model.render(z_anon, attributes))
        estimate = compensator(model.identity_encoder(stored))
        read_attributes = model.attribute_encoder(stored)
        recovered = transform.inverse(estimate, key.expand(n, -1))
        second = as_stored(model.render(transform(identity, next_key.expand(n, -1)), attributes))
        j_anon = judge(stored)
        values = {
            "anonymized": F.cosine_similarity(j_anon, j_x),
            "recovered": F.cosine_similarity(judge(model.render(recovered, read_attributes)), j_x),
            "wrong_key": F.cosine_similarity(
                judge(model.render(transform.inverse(estimate, next_key.expand(n, -1)), read_attributes)), j_x
            ),
            "two_keys": F.cosine_similarity(judge(second), j_anon),
            "compensator": F.cosine_similarity(estimate, z_anon),
            "after_inverse": F.cosine_similarity(recovered, identity),
        }
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value.sum().item()
    return {name: total / len(test[0]) for name, total in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_and_judge_arguments(parser)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--fit_images", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task, datamodule = _build_task(args.config, args.ckpt_path, strict=True)
    model = task.model.eval()
    judge = judge_encoder(args.judge)
    datamodule.setup("fit")
    datamodule.setup("test")
    train: list[Tensor] = []
    for batch in datamodule.train_dataloader():
        train.append(batch["image"])
        if sum(len(part) for part in train) >= args.fit_images:
            break
    fit_images = torch.cat(train)[: args.fit_images]
    test_images = torch.cat([batch["image"] for batch in datamodule.test_dataloader()])
    identities, fit_attributes = encode(model, fit_images, 128)
    with torch.no_grad():
        test = (*encode(model, test_images, 128), torch.cat([judge(x) for x in test_images.split(100)]))

    variance = PrincipalIsometry(identities, "none").variance
    share = (variance.cumsum(0) / variance.sum())[[0, 1, 3, 7, 15]].tolist()
    lines = [
        f"Test faces: {len(test_images)}; principal directions and compensators fitted on "
        f"{len(fit_images)} training faces; judged by {recognizer_label(args.judge)}; "
        f"model {Path(args.ckpt_path).parent.name}.",
        "The identity encoder on those faces: variance share of its top 1 / 2 / 4 / 8 / 16 principal "
        "directions "
        + " / ".join(f"{s:.2f}" for s in share)
        + f"; participation ratio {variance.sum().pow(2).item() / variance.pow(2).sum().item():.1f}.",
        f"Machine: {describe(args.threads)}.",
        "",
        "| keyed map | anonymized | recovered | wrong key | two keys | compensator | after inverse "
        "| 3 goals | 4 goals |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for family in args.families:
        transform = keyed_map(identities, family)
        compensator = fit_compensator(model, identities, fit_attributes, transform)
        generator = torch.Generator().manual_seed(0)
        keys = transform.draw(generator, args.keys)
        rows = [score(model, judge, test, transform, compensator, keys[i], keys[(i + 1) % len(keys)])
                for i in range(len(keys) if family != "none" else 1)]
        cells = []
        for name in ("anonymized", "recovered", "wrong_key", "two_keys", "compensator", "after_inverse"):
            low, high = min(r[name] for r in rows), max(r[name] for r in rows)
            cells.append(f"{low:.3f}" if len(rows) == 1 else f"{low:.3f}–{high:.3f}")
        three = sum(all(_meets(g, r[g]) for g in GOALS if g != "recovered") for r in rows)
        four = sum(all(_meets(g, r[g]) for g in GOALS) for r in rows)
        counts = ["—", "—"] if family == "none" else [f"{three} of {len(rows)}", f"{four} of {len(rows)}"]
        lines.append(f"| {family} | " + " | ".join(cells + counts) + " |")
        print(lines[-1], flush=True)
    publish(lines, args.out)


if __name__ == "__main__":
    main()
