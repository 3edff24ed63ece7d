"""Forward+inverse speed and inverse error of every registered flow against a FrEIA AllInOneBlock stack.

The FrEIA stack (the official iFADIT flow: 4 × AllInOneBlock with a 768→256→128→128→256→512 LeakyReLU
subnet) is timed in the same run, interleaved with the flows rep by rep, so machine load hits both alike and
the reported ratio stays meaningful on a shared machine. Run: ``python benchmarks/flows.py``.
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
from machine import describe  # benchmarks/ is on sys.path when a script runs
from torch import Tensor, nn

from ifadit import registry
from ifadit.flows.layers import mlp

REFERENCE = "FrEIA AllInOneBlock ×{blocks} (reference)"
# Non-default settings worth a row of their own: the trade-off they make is the point.
VARIANTS = {"glow": {"exact_mixing": {"exact_mixing": True}}}


def freia_reference(dim: int, cond_dim: int, num_blocks: int) -> nn.Module:
    try:
        from FrEIA.framework import SequenceINN
        from FrEIA.modules import AllInOneBlock
    except ImportError as exc:
        raise SystemExit(
            "benchmarks/flows.py compares against FrEIA: pip install 'ifadit[bench]' (FrEIA==0.2)"
        ) from exc
    inn = SequenceINN(dim)
    for _ in range(num_blocks):
        inn.append(
            AllInOneBlock,
            cond=0,
            cond_shape=(cond_dim,),
            subnet_constructor=lambda c_in, c_out: mlp(c_in, (256, 128, 128, 256), c_out),
        )
    return inn


def round_trip_fn(model: nn.Module, is_freia: bool, z: Tensor, cond: Tensor) -> Callable[[], Tensor]:
    if is_freia:
        return lambda: model(model(z, c=[cond])[0], c=[cond], rev=True)[0]
    return lambda: model.inverse(model(z, cond)[0], cond)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--cond_dim", type=int, default=512)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    reference = REFERENCE.format(blocks=args.blocks)
    models: dict[str, tuple[nn.Module, bool]] = {
        reference: (freia_reference(args.dim, args.cond_dim, args.blocks), True)
    }
    failed: dict[str, str] = {}
    sizes = {"dim": args.dim, "cond_dim": args.cond_dim, "num_blocks": args.blocks}
    for name, info in registry.available("flows").items():
        try:
            models[f"{name} ({info.distribution})"] = (registry.create("flows", name, **sizes), False)
            for variant, kwargs in VARIANTS.get(name, {}).items():
                models[f"{name}, {variant} ({info.distribution})"] = (
                    registry.create("flows", name, **sizes, **kwargs),
                    False,
                )
        except Exception as exc:  # a broken plugin is reported in the table, not fatal
            failed[name] = f"{type(exc).__name__}: {exc}"

    z = nn.functional.normalize(torch.randn(args.batch, args.dim), dim=1)  # identities are unit vectors
    cond = torch.randint(0, 2, (args.batch, args.cond_dim)).float() * 2 - 1  # key-like ±1 vectors
    runs = {}
    errors = {}
    with torch.no_grad():
        for label, (model, is_freia) in models.items():
            # One training-mode pass first: data-dependent initialisers (glow's ActNorm, the spline's feature
            # scale) set themselves on the first training batch, as they would before any real use.
            if not is_freia:
                model.train()
                model(z, cond)
            model.eval()
            runs[label] = round_trip_fn(model, is_freia, z, cond)
            errors[label] = (runs[label]() - z).abs().max().item()
            for _ in range(args.warmup - 1):
                runs[label]()
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.reps):
            for label, run in runs.items():
                start = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - start)

    ref_ms = statistics.median(times[reference]) * 1e3
    rows = []
    for label, (model, is_freia) in models.items():
        ms = statistics.median(times[label]) * 1e3
        ratio = ms / ref_ms
        goal = None if is_freia else ratio <= 1.0 and errors[label] <= errors[reference]
        rows.append(
            {
                "flow": label,
                "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "median_ms": ms,
                "min_ms": min(times[label]) * 1e3,
                "max_ms": max(times[label]) * 1e3,
                "ratio_vs_freia": ratio,
                "max_inverse_error": errors[label],
                "meets_goal": goal,
            }
        )

    machine = describe(torch.get_num_threads())
    setup = (
        f"dim {args.dim}, cond {args.cond_dim}, {args.blocks} blocks, batch {args.batch}, float32, CPU, "
        f"eval, no_grad; forward+inverse, median of {args.reps} interleaved reps after {args.warmup} warm-up"
    )
    lines = [
        f"Flows — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — {machine}",
        f"({setup})",
        "",
        "| flow | trainable params | fwd+inv ms (median) | min–max ms | × FrEIA | max inverse err | goal |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        goal = "reference" if r["meets_goal"] is None else ("yes" if r["meets_goal"] else "no")
        lines.append(
            f"| {r['flow']} | {r['params']:,} | {r['median_ms']:.2f} | {r['min_ms']:.2f}–{r['max_ms']:.2f} "
            f"| {r['ratio_vs_freia']:.2f} | {r['max_inverse_error']:.1e} | {goal} |"
        )
    lines += [f"| {name} | — | failed to build: {error} | | | | no |" for name, error in failed.items()]
    lines += ["", "goal: ratio ≤ 1.00 and max inverse error ≤ FrEIA's (float32, z = unit vectors)."]
    table = "\n".join(lines)
    print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flows.md").write_text(table + "\n")
    report = {"machine": machine, "setup": setup, "rows": rows, "failed": failed}
    (args.out / "flows.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
