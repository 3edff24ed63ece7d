"""CPU cost of the optional adversarial loss: one quickstart phase-1 training step with and without a critic.

Each row is the recipe's phase 1 (``recipes/quickstart/disentangle.yaml``: its components, losses, batch 8 at
64 px with swap targets, bf16 autocast, fused Adam) with ``losses.adversarial`` and a ``stylegan2``
discriminator of the given widths (``r1: 0.1`` every 16 steps, as in the adversarial rows of
docs/research.md, "Phase 1 (disentangle)": a small critic cost 0.65x speed), timed interleaved with the others
step by step, so machine load hits them alike. Random images stand in for SynthFaces: the
cost of a step does not depend on what the pixels show.

Run: ``python benchmarks/adversarial_cost.py [--threads 2] [--reps 32]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml
from machine import describe  # benchmarks/ is on sys.path when a script runs

from ifadit.lightning_cli import build_task_from_config
from ifadit.task import IFADITTask

# Without a trainer a task's global_step is always 0, which would make every step a lazy-R1 step.
IFADITTask.global_step = property(lambda self: self.__dict__.get("_steps_taken", 0))

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/quickstart/disentangle.yaml"
SMALL = {64: 16, 32: 32, 16: 64, 8: 64, 4: 64}
GENERATOR_SIZED = {64: 32, 32: 64, 16: 96, 8: 128, 4: 128}  # the quickstart generator's widths
CRITICS = {  # name -> channel table of the 64 px discriminator (None: no critic, the recipe)
    "the recipe (no critic)": None,
    f"+ small critic {SMALL}": SMALL,
    f"+ generator-sized critic {GENERATOR_SIZED}": GENERATOR_SIZED,
}


def training_step(channels: dict[int, int] | None, batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    model = yaml.safe_load(RECIPE.read_text())["model"]
    model["optimizer"]["schedule"] = "constant"  # a cosine schedule needs a trainer's step count
    if channels is not None:
        model["discriminator"] = {"class_path": "stylegan2", "init_args": {"size": 64, "channels": channels}}
        model["losses"] = {**model["losses"], "adversarial": 0.1, "r1": 0.1}
    task = build_task_from_config(model)  # for_checkpoint: no init_from chain, random weights
    optimizer = task.configure_optimizers()
    task.log = task.log_dict = lambda *args, **kwargs: None  # no trainer to log to

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = task.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        task.__dict__["_steps_taken"] = task.global_step + 1
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = {"image": torch.rand(8, 3, 64, 64) * 2 - 1, "swap_image": torch.rand(8, 3, 64, 64) * 2 - 1}
    steps = {name: training_step(channels, batch) for name, channels in CRITICS.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.reps):  # the lazy R1 step comes once every 16 of them, as in training
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    base = statistics.mean(times[next(iter(times))])
    rows = [
        {"setting": name, "mean_ms": statistics.mean(t) * 1e3, "median_ms": statistics.median(t) * 1e3,
         "speed_vs_recipe": base / statistics.mean(t)}
        for name, t in times.items()
    ]
    machine = describe(args.threads)
    when = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    lines = [
        f"Phase-1 step with the adversarial loss — {when} — {machine}",
        f"(quickstart phase 1, batch 8 at 64 px, bf16 autocast; {args.reps} interleaved steps after "
        f"{args.warmup} warm-ups; the mean includes the lazy R1 steps)",
        "",
        "| setting | mean ms/step | median ms/step | speed against the recipe |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['setting']} | {r['mean_ms']:.0f} | {r['median_ms']:.0f} | {r['speed_vs_recipe']:.2f}x |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adversarial_cost.md").write_text(text)
    (args.out / "adversarial_cost.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
