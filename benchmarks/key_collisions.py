"""Where a trained model loses recovery, and how often its keys collide.

For each user key: the judge's cosines on the test faces (original vs anonymized, recovered, recovered with
the *next* key in the list, and the next key's anonymization), and where recovery loses the identity — the
identity encoder reading the anonymized face back (``read_back``: cos(E_id(x_anon), z_anon)), the
compensator's estimate of ``z_anon``, the identity after the inverse flow, and what the attribute path alone
allows (``true_identity``: the judge's cosine of the true identity rendered with the attributes read from the
anonymized face). Anonymized faces are read as their 8-bit files hold them, as in the metrics suite.
Pairing every key with the next user key is harsher than ``ifadit score`` (one fixed public second key, a
different public wrong key per image): a pair of keys that collide fails both the two-key and the wrong-key
goal here.

Then ``--random_keys`` fresh keys on 32 test faces: the pairwise cosines of the flow's outputs for two keys
(the same face), whose high tail is the key collisions.

Run: ``OMP_NUM_THREADS=1 python benchmarks/key_collisions.py --keys a.key b.key c.key`` (defaults: the
quickstart checkpoints and the shipped judge, ``--judge synthfaces64-judge``). Prints a table and writes
``--out`` (JSON) when given. Results on the quickstart checkpoints: docs/research.md, "Where recovery loses
the identity" and the tables after it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ifadit.anonymizer import IFADIT
from ifadit.cli import _build_task
from ifadit.keys import SecretKey
from ifadit.nets import IdentityEncoder
from ifadit.nets.image import as_stored
from ifadit.recognizers import EncoderRecognizer, build_recognizer

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "outputs/checkpoints/ifadit"
GOALS = {  # the quickstart's four goals on the judge's cosines (docs/research.md, "How things were measured")
    "anonymized": ("<=", 0.3),
    "recovered": (">=", 0.8),
    "wrong_key": ("<=", 0.3),
    "two_keys": ("<=", 0.5),
}


@torch.no_grad()
def score_key(
    model: IFADIT, judge: IdentityEncoder, batches: list[Tensor], key: SecretKey, next_key: SecretKey
) -> dict[str, float]:
    """Mean cosines over all faces of ``batches`` for ``key``, with ``next_key`` as wrong and second key."""
    sums: dict[str, float] = {}
    count = 0
    for x in batches:
        n = x.shape[0]
        cond = model.key_scheme(key, batch_size=n)
        other = model.key_scheme(next_key, batch_size=n)
        anonymized = model.anonymize(x, cond)
        stored = as_stored(anonymized.image)  # the 8-bit file a recovery reads, as in the metrics suite
        attributes = model.attribute_encoder(stored)  # shared by the right and the wrong key
        recovered = model.recover(stored, cond, attributes)
        wrong = model.render(model.flow.inverse(recovered.flow_input, other), attributes)
        second, _ = model.flow(anonymized.identity, other)
        j_x, j_anon = judge(x), judge(stored)
        read_back = model.identity_encoder(stored)
        values = {
            "reconstruction": F.cosine_similarity(
                judge(model.render(anonymized.identity, anonymized.attributes)), j_x
            ),
            "anonymized": F.cosine_similarity(j_anon, j_x),
            "recovered": F.cosine_similarity(judge(recovered.image), j_x),
            "wrong_key": F.cosine_similarity(judge(wrong), j_x),
            "two_keys": F.cosine_similarity(judge(as_stored(model.render(second, anonymized.attributes))),
                                            j_anon),
            # the attribute path alone: the true identity rendered with the attributes read from the file
            "true_identity": F.cosine_similarity(judge(model.render(anonymized.identity, attributes)), j_x),
            "read_back": F.cosine_similarity(read_back, anonymized.anonymized_identity),
            "compensator": F.cosine_similarity(recovered.flow_input, anonymized.anonymized_identity),
            "after_inverse": F.cosine_similarity(recovered.identity, anonymized.identity),
            "latent_two_keys": F.cosine_similarity(second, anonymized.anonymized_identity),
        }
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value.sum().item()
        count += n
    return {name: total / count for name, total in sums.items()}


@torch.no_grad()
def key_pair_cosines(model: IFADIT, faces: Tensor, num_keys: int) -> Tensor:
    """Mean over ``faces`` of cos(F(z, c_i), F(z, c_j)) for every pair of ``num_keys`` fresh keys."""
    z = model.identity_encoder(faces)
    conds = model.key_scheme.sample(num_keys)
    outputs = torch.stack([model.flow(z, c.expand(len(z), -1))[0] for c in conds])
    unit = F.normalize(outputs, dim=2)
    pairs = torch.einsum("kbd,lbd->klb", unit, unit).mean(dim=2)
    upper = torch.triu_indices(num_keys, num_keys, offset=1)
    return pairs[upper[0], upper[1]]


def _meets(name: str, value: float) -> bool:
    op, bound = GOALS[name]
    return value <= bound if op == "<=" else value >= bound


def add_model_and_judge_arguments(parser: argparse.ArgumentParser) -> None:
    """A trained model and the judge scoring it, spelled as in ``ifadit score``; the defaults are the
    quickstart's checkpoints and the shipped judge."""
    parser.add_argument("--config", default=str(ROOT / "recipes/quickstart/compensator.yaml"))
    parser.add_argument("--ckpt_path", default=str(CKPT / "quickstart-compensator/last.ckpt"))
    parser.add_argument("--judge", default="synthfaces64-judge", metavar="NAME_OR_CKPT",
                        help="the recognizer that scores: a registered name (default: the shipped SynthFaces "
                        "judge) or CKPT:config=RECIPE of a recognizer ifadit trained")


def judge_encoder(spec: str) -> IdentityEncoder:
    """The bare identity encoder of the judge ``spec`` names (see ``--judge``), in eval mode."""
    recognizer = build_recognizer(spec)
    if not isinstance(recognizer, EncoderRecognizer):
        raise SystemExit(f"judge {spec!r} is a {type(recognizer).__name__}, not an EncoderRecognizer: "
                         "this benchmark needs its identity encoder")
    return recognizer.encoder.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_and_judge_arguments(parser)
    parser.add_argument("--keys", nargs="+", required=True, help="user key files, two or more")
    parser.add_argument("--random_keys", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if len(args.keys) < 2:
        parser.error("give at least two keys: each key is paired with the next one")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the random keys of the collision count

    task, datamodule = _build_task(args.config, args.ckpt_path, strict=True)
    model, judge = task.model.eval(), judge_encoder(args.judge)
    datamodule.setup("test")
    batches = [batch["image"] for batch in datamodule.test_dataloader()]
    keys = [SecretKey.load(path) for path in args.keys]

    rows = {}
    print("| key | anonymized | recovered | wrong key (next) | two keys (next) | read-back | after inverse "
          "| true identity |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, (path, key) in enumerate(zip(args.keys, keys, strict=True)):
        scores = score_key(model, judge, batches, key, keys[(i + 1) % len(keys)])
        rows[Path(path).name] = scores
        cells = [f"{scores[g]:+.3f} {'✓' if _meets(g, scores[g]) else '✗'}" for g in GOALS]
        diagnosis = [f"{scores[name]:.2f}" for name in ("read_back", "after_inverse", "true_identity")]
        print(f"| {Path(path).name} | " + " | ".join(cells + diagnosis) + " |")
    pairs = key_pair_cosines(model, torch.cat(batches)[:32], args.random_keys)
    collisions = {"median": pairs.median().item(), "above_0.5": (pairs > 0.5).float().mean().item(),
                  "above_0.8": (pairs > 0.8).float().mean().item()}
    print(f"{args.random_keys} random keys, flow outputs of one face for two keys: median cosine "
          f"{collisions['median']:.3f}, above 0.5 for {100 * collisions['above_0.5']:.0f} % of key pairs, "
          f"above 0.8 for {100 * collisions['above_0.8']:.0f} %")
    if args.out:
        Path(args.out).write_text(json.dumps({"keys": rows, "random_key_pairs": collisions}, indent=1) + "\n")


if __name__ == "__main__":
    main()
