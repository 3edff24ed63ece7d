"""The quickstart's goals for fresh random keys, unchecked: does every key a user may draw work?

For ``--keys`` fresh random keys (``SecretKey.generate``, never checked or filtered) on the test faces, the
independent judge's cosines and the recovery PSNR, per key:

- anonymized ↔ original, recovered ↔ original and the recovery PSNR (recovery reads the anonymized face
  as its 8-bit file stores it);
- two keys: the mean cosine of this key's anonymization to every other key's, on the same faces;
- wrong keys, every ordered pair of user keys (key j recovering key i's anonymized face, on the first
  ``--pair_faces`` faces): not only the suite's public wrong keys;
- collisions: unordered key pairs whose flow outputs (the anonymized identity vectors of the same face)
  have a mean cosine above 0.5;
- realism: FID in the judge's feature space (torchmetrics ``FrechetInceptionDistance`` with the judge as
  ``feature``) of reconstructions, anonymized and wrong-key renders against the test faces.

Run: ``OMP_NUM_THREADS=2 python benchmarks/keys.py --out benchmarks/results/keys`` (defaults: the
quickstart's final checkpoint and the shipped judge, ``--judge synthfaces64-judge``). Writes ``<out>.md``
(the table in benchmarks/README.md) and ``<out>.json`` (every number).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from key_collisions import add_model_and_judge_arguments, judge_encoder  # benchmarks/ is on sys.path
from machine import describe, shown_path
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ifadit.cli import _build_task
from ifadit.keys import SecretKey
from ifadit.nets.image import as_stored

GOALS = {  # measure: (direction, bound, what must meet it)
    "anonymized": ("<=", 0.3, "every key"),
    "recovered": (">=", 0.9, "every key"),
    "recovery_psnr": (">=", 24.0, "every key"),
    "wrong_key": ("<=", 0.3, "every ordered pair"),
    "two_keys": ("<=", 0.3, "31 of 32 keys"),
}


class JudgeFeatures(nn.Module):
    """The judge as torchmetrics' FID feature extractor: [-1, 1] images -> unit embeddings."""

    def __init__(self, judge: nn.Module) -> None:
        super().__init__()
        self.judge = judge
        self.num_features = judge.embedding_dim

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.judge(images), dim=1)


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return F.cosine_similarity(a, b, dim=-1)


@torch.no_grad()
def measure(model: nn.Module, judge: nn.Module, x: Tensor, keys: list[SecretKey], pair_faces: int) -> dict:
    """Every number of the table, per key and per pair."""
    n, p = x.shape[0], min(pair_faces, x.shape[0])
    real = judge(x)
    fid = {k: FrechetInceptionDistance(feature=JudgeFeatures(judge)) for k in ("recon", "anon", "wrong")}
    for metric in fid.values():
        metric.update(x, real=True)
    fid["recon"].update(model.reconstruct(x).clamp(-1, 1), real=False)
    per_key, anonymized_emb, flow_outputs, conds, flow_inputs, attributes = [], [], [], [], [], []
    for key in keys:
        cond = model.key_scheme(key, batch_size=n)
        anonymized = model.anonymize(x, cond)
        stored = as_stored(anonymized.image)
        recovered = model.recover(stored, cond)
        fid["anon"].update(stored, real=False)
        anonymized_emb.append(judge(stored))
        flow_outputs.append(anonymized.anonymized_identity)
        conds.append(cond[:p])
        flow_inputs.append(model.flow_input_from_image(stored[:p]))
        attributes.append(model.attribute_encoder(stored[:p]))
        per_key.append(
            {
                "anonymized": _cos(anonymized_emb[-1], real).mean().item(),
                "recovered": _cos(judge(recovered.image), real).mean().item(),
                "recovery_psnr": kornia.metrics.psnr(
                    (recovered.image.clamp(-1, 1) + 1) / 2, (x + 1) / 2, 1.0
                ).item(),
            }
        )
    for i, row in enumerate(per_key):
        others = [_cos(anonymized_emb[i], anonymized_emb[j]).mean() for j in range(len(keys)) if j != i]
        row["two_keys"] = torch.stack(others).mean().item()
    wrong = {}
    for i, j in itertools.permutations(range(len(keys)), 2):
        identity = model.flow.inverse(flow_inputs[i], conds[j])
        render = model.render(identity, attributes[i])
        fid["wrong"].update(render.clamp(-1, 1), real=False)
        wrong[(i, j)] = _cos(judge(render), real[:p]).mean().item()
    collisions = [
        _cos(flow_outputs[i], flow_outputs[j]).mean().item()
        for i, j in itertools.combinations(range(len(keys)), 2)
    ]
    return {
        "per_key": per_key,
        "wrong_key_pairs": {f"{i}->{j}": v for (i, j), v in wrong.items()},
        "flow_output_pair_cos": collisions,
        "collision_rate": sum(c > 0.5 for c in collisions) / len(collisions),
        "fid": {k: float(m.compute()) for k, m in fid.items()},
    }


def table(result: dict, faces: int, pair_faces: int, machine: str, source: str) -> str:
    per_key = result["per_key"]
    count = len(per_key)
    lines = [
        f"{count} fresh random keys (unchecked), {faces} test faces ({pair_faces} for the "
        f"{count * (count - 1)} ordered wrong-key pairs). Model: {source}. Machine: {machine}.",
        "",
        "| measure | goal | min | median | max | meet the goal |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def row(name: str, values: list[float], goal: tuple[str, float, str]) -> str:
        direction, bound, who = goal
        ok = sum((v <= bound) if direction == "<=" else (v >= bound) for v in values)
        low, median, high = min(values), sorted(values)[len(values) // 2], max(values)
        return (
            f"| {name} | {direction} {bound:g} for {who} | {low:.3f} | {median:.3f} | {high:.3f} "
            f"| {ok} of {len(values)} |"
        )

    for measure in ("anonymized", "recovered", "recovery_psnr", "two_keys"):
        lines.append(row(measure.replace("_", " "), [k[measure] for k in per_key], GOALS[measure]))
    lines.append(
        row("wrong key (ordered pairs)", list(result["wrong_key_pairs"].values()), GOALS["wrong_key"])
    )
    fid = result["fid"]
    lines += [
        "",
        f"Key pairs colliding (flow outputs cos > 0.5): {100 * result['collision_rate']:.1f} % "
        f"of {len(result['flow_output_pair_cos'])} (goal ≤ 5 %).",
        f"FID in the judge's feature space: reconstructions {fid['recon']:.3f}, anonymized {fid['anon']:.3f} "
        f"({fid['anon'] / fid['recon']:.2f}×), wrong-key renders {fid['wrong']:.3f} "
        f"({fid['wrong'] / fid['recon']:.2f}×) (goal ≤ 2×).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_and_judge_arguments(parser)
    parser.add_argument("--keys", type=int, default=32, help="fresh random keys")
    parser.add_argument("--faces", type=int, default=600, help="test faces per key")
    parser.add_argument("--pair_faces", type=int, default=16, help="test faces per ordered wrong-key pair")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    if args.keys < 2:
        parser.error("--keys must be at least 2 (two keys and wrong keys need pairs)")
    torch.set_num_threads(args.threads)
    task, datamodule = _build_task(args.config, args.ckpt_path, strict=True)
    judge = judge_encoder(args.judge)
    datamodule.setup("test")
    x = torch.cat([b["image"] for b in datamodule.test_dataloader()])[: args.faces]
    keys = [SecretKey.generate() for _ in range(args.keys)]
    result = measure(task.model.eval(), judge, x, keys, args.pair_faces)
    source = shown_path(args.ckpt_path)
    text = table(result, x.shape[0], min(args.pair_faces, x.shape[0]), describe(args.threads), source)
    print(text)
    if args.out:
        Path(f"{args.out}.md").write_text(text + "\n")
        Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
