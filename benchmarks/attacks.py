"""What an attacker who holds the model but not the key learns: the learned inversion at several attacker
budgets, next to chance, the attributes-only reference and the right key.

``ifadit evaluate`` runs the attacks once, at its flags' budget (the quickstart's numbers in
``benchmarks/README.md``, "Attacks by a model holder"). This script asks whether a bigger attacker does
better: for each ``--budget HIDDEN:STEPS:PAIRS`` (e.g. ``256,512,256:3000:9600``, the compensator's layout
and budget on the quickstart) it trains an inverter on train-split faces anonymized under random public keys
(pairs rendered once, the largest budget's count; smaller budgets use the first ones) and scores it on the
test faces through the metrics suite (anonymized with ``--key``, judged by ``--recognizer``). The key search
runs once, with the first budget, over ``--attack_keys`` keys.

Run (defaults: the quickstart checkpoints and key, the shipped judge ``synthfaces64-judge``)::

    OMP_NUM_THREADS=2 python benchmarks/attacks.py --budget 256,512,256:3000:9600 \
        --budget 512,1024,512:6000:19200 --out benchmarks/results/attacks

Writes ``attacks.json`` and ``attacks.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import describe, shown_path  # benchmarks/ is on sys.path when a script runs

from ifadit.cli import _build_task
from ifadit.evaluate import attack_summary, calibrate_missing_thresholds, format_value, run_suite
from ifadit.keys import SecretKey
from ifadit.metrics.attacks import ModelAttacks, attack_pairs, train_inverter
from ifadit.recognizers import build_recognizer, parse_recognizer_spec, recognizer_label
from ifadit.recognizers.spec import is_checkpoint_path

CKPT = "outputs/checkpoints/ifadit"


def parse_budget(text: str) -> tuple[tuple[int, ...], int, int]:
    """``HIDDEN:STEPS:PAIRS`` with HIDDEN comma-separated widths."""
    hidden, steps, pairs = text.split(":")
    return tuple(int(w) for w in hidden.split(",")), int(steps), int(pairs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="recipes/quickstart/compensator.yaml")
    p.add_argument("--ckpt_path", default=f"{CKPT}/quickstart-compensator/last.ckpt")
    p.add_argument("--recognizer", default="synthfaces64-judge", metavar="NAME_OR_CKPT",
                   help="the judge: a registered name (default: the shipped SynthFaces judge) or "
                   "CKPT:config=RECIPE of a recognizer ifadit trained")
    p.add_argument("--key", default="outputs/quickstart/quickstart.key")
    p.add_argument("--budget", action="append", type=parse_budget, metavar="HIDDEN:STEPS:PAIRS")
    p.add_argument("--attack_keys", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=256, help="the attacker's batch size")
    p.add_argument("--limit", type=int, help="score at most this many test faces")
    p.add_argument("--out", default="benchmarks/results/attacks")
    args = p.parse_args()
    budgets = args.budget or [parse_budget("256,512,256:3000:9600")]

    task, datamodule = _build_task(args.config, args.ckpt_path, strict=True)
    model = task.model.eval()
    label = recognizer_label(args.recognizer)
    recognizers = {label: build_recognizer(args.recognizer)}
    datamodule.setup("test")
    calibration = calibrate_missing_thresholds(recognizers, datamodule.val_dataloader(), far=1e-3)
    secret = SecretKey.load(args.key)

    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inputs, targets = attack_pairs(model, datamodule.train_dataloader(), max(b[2] for b in budgets))
    render_s = time.perf_counter() - start
    j = label
    rows = []
    for n, (hidden, steps, pairs) in enumerate(budgets):
        start = time.perf_counter()
        inverter = train_inverter(inputs[:pairs], targets[:pairs], hidden, steps, args.batch_size)
        train_s = time.perf_counter() - start
        keys = args.attack_keys if n == 0 else 0
        attacks = ModelAttacks(recognizers, keys, inverter, targets[:pairs].mean(dim=0))
        report = run_suite(model, datamodule.test_dataloader(), secret, recognizers, detector=False,
                           fid=False, limit=args.limit, keep_samples=0, attacks=attacks)
        rows.append({
            "attacker": f"MLP {'-'.join(map(str, hidden))}, {steps} steps, {min(pairs, len(inputs))} pairs",
            "train_seconds": round(train_s, 1),
            "images": report.meta["images"],
            **{k: v for k, v in report.results.items()
               if k.startswith(("security/", "reversibility/", "anonymity/"))},
        })
        print(f"{rows[-1]['attacker']}: " + "; ".join(attack_summary(report.results, j)), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = parse_recognizer_spec(args.recognizer)[0]
    meta = {
        "machine": describe(torch.get_num_threads()),
        "checkpoint": shown_path(args.ckpt_path),
        "config": args.config,
        "judge": shown_path(head) if is_checkpoint_path(head) else head,
        "calibration": {k: vars(c) for k, c in calibration.items()},
        "key_fingerprint": secret.fingerprint,
        "pairs_render_seconds": round(render_s, 1),
    }
    (out / "attacks.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    inversion = f"security/learned_inversion/{j}"
    columns = (f"{inversion}/cos", f"{inversion}/chance", f"{inversion}/mean_identity/cos",
               f"reversibility/{j}/cos", "security/learned_inversion/latent/cos",
               "security/learned_inversion/latent/chance")
    lines = [
        "# Learned inversion by attacker budget", "",
        f"Model `{meta['checkpoint']}`, judge `{meta['judge']}`, key {secret.fingerprint}, "
        f"{rows[0]['images']} test faces; {meta['machine']}.", "",
        "| attacker | learned inversion (judge cos) | chance | mean identity | right key | latent cos "
        "| latent chance | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = " | ".join(format_value("cos", row.get(name)) for name in columns)
        lines.append(f"| {row['attacker']} | {cells} | {row['train_seconds']} |")
    lines += ["", *attack_summary(rows[0], j)]
    (out / "attacks.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'attacks.md'} and {out / 'attacks.json'}")


if __name__ == "__main__":
    main()
