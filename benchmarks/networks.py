"""CPU forward time and peak memory of every face network at 256 px, batch 4, random weights.

Each network runs in a fresh subprocess, so its peak RSS is its own and not a leftover of the network
before it. The baseline RSS is taken after importing torch and the network's module and building the
inputs; the delta (peak - baseline) is then weights + activations + allocator slack of that network alone.
Run: ``python benchmarks/networks.py [--threads 1] [--reps 3] [--backward] [--only stylegan2 ...]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from machine import cpu_name  # benchmarks/ is on sys.path when a script runs

BATCH = 4
SIZE = 256
N_STYLES = 14  # W+ of a 256 px StyleGAN2
DIM = 512
BUSY_LOAD = 1.5


@dataclass(frozen=True)
class Spec:
    """How to build one network and what it is fed: input shapes are per call argument."""

    target: str  # "module:Class"
    inputs: tuple[tuple[int, ...], ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""


IMAGE = (BATCH, 3, SIZE, SIZE)
SPECS: dict[str, Spec] = {
    "stylegan2": Spec(
        "ifadit.nets.stylegan2:StyleGAN2Generator",
        ((BATCH, N_STYLES, DIM),),
        {"size": SIZE, "channel_multiplier": 2, "n_mlp": 8},
        "256 px, cm=2, n_mlp=8; renders W+ (stored noise)",
    ),
    "arcface_irse50": Spec(
        "ifadit.nets.arcface:ArcFaceEncoder",
        (IMAGE,),
        {"allow_random_init": True},
        "IR-SE50; crop -> 112 px",
    ),
    "psp": Spec(
        "ifadit.nets.psp:PSPEncoder",
        (IMAGE,),
        {"output_size": SIZE},
        "GradualStyleEncoder IR-SE50, 14 styles",
    ),
    "facenet_vggface2": Spec(
        "ifadit.nets.facenet:FaceNetVGGFace2Encoder",
        (IMAGE,),
        {"allow_random_init": True},
        "InceptionResnetV1; resized to 160 px",
    ),
    "timm_identity": Spec(
        "ifadit.nets.timm_encoders:TimmIdentityEncoder", (IMAGE,), {}, "resnet18, resized to 112 px (default)"
    ),
    "timm_attribute": Spec(
        "ifadit.nets.timm_encoders:TimmAttributeEncoder", (IMAGE,), {}, "resnet18 features, full 256 px"
    ),
    "latent_mapper": Spec("ifadit.nets.mappers:LatentMapper", ((BATCH, DIM), (BATCH, N_STYLES, DIM))),
    "compensation_mlp": Spec(
        "ifadit.nets.mappers:CompensationMLP", ((BATCH, DIM),), {}, "widths 512-1024-2048-1024-512"
    ),
    "flow_allinone": Spec(
        "ifadit.flows.allinone:AllInOneFlow",
        ((BATCH, DIM), (BATCH, DIM)),
        {"dim": DIM, "cond_dim": DIM, "num_blocks": 4},
        "4 AllInOne blocks conditioned on a 512-d key; anonymizing direction",
    ),
}


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def measure(name: str, threads: int, reps: int, backward: bool) -> dict[str, Any]:
    """Runs inside the worker subprocess: build, warm up, time, and read the memory high-water mark."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = SPECS[name]
    module_name, class_name = spec.target.split(":")
    network_class = getattr(importlib.import_module(module_name), class_name)
    inputs = [torch.rand(shape) * 2 - 1 for shape in spec.inputs]
    baseline = current_rss_mib()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" warnings: expected here
        network = network_class(**spec.kwargs).eval()
    params = sum(p.numel() for p in network.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    after_build = peak_rss_mib()

    def step() -> None:
        out = network(*inputs)
        if backward:
            out = out[0] if isinstance(out, tuple) else out
            out.square().mean().backward()
            network.zero_grad(set_to_none=True)

    if backward:
        for tensor in inputs:  # frozen encoders still pass gradients to their inputs (identity loss)
            tensor.requires_grad_(True)
    times = []
    with torch.set_grad_enabled(backward):
        for rep in range(reps + 1):
            start = time.perf_counter()
            step()
            if rep:  # rep 0 is the warm-up
                times.append(time.perf_counter() - start)
    peak = peak_rss_mib()
    return {
        "params": params,
        "trainable_params": trainable,
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "baseline_rss_mib": baseline,
        "peak_after_build_mib": after_build,
        "peak_rss_mib": peak,
        "delta_rss_mib": peak - baseline,
    }


def run_worker(name: str, args: argparse.Namespace, backward: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", name, "--threads", str(args.threads)]
    command += ["--reps", str(args.reps)]
    if backward:
        command.append("--backward")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_ms(result: dict[str, Any] | None) -> str:
    if result is None:
        return "—"
    if "error" in result:
        return f"failed ({result['error']})"
    digits = 1 if result["min_ms"] >= 10 else 2
    low, mid, high = (f"{result[key]:,.{digits}f}" for key in ("min_ms", "median_ms", "max_ms"))
    return f"{mid} ({low}–{high})"


def table_rows(rows: list[dict[str, Any]], backward: bool) -> list[str]:
    header = (
        "| network | input | params | trainable | fwd ms median (min–max) | peak RSS MiB | Δ RSS MiB "
        "| of which built MiB | load |"
    )
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    if backward:
        header += " fwd+bwd ms median (min–max) | fwd+bwd peak / Δ MiB |"
        rule += "---:|---:|"
    lines = [header, rule]
    for row in rows:
        fwd = row["forward"]
        shapes = " + ".join("×".join(map(str, shape)) for shape in SPECS[row["network"]].inputs)
        if "error" in fwd:
            cells = ["—", "—", fmt_ms(fwd), "—", "—", "—", f"{row['load']:.1f}"]
        else:
            cells = [
                f"{fwd['params'] / 1e6:.2f} M",
                f"{fwd['trainable_params'] / 1e6:.2f} M",
                fmt_ms(fwd),
                f"{fwd['peak_rss_mib']:,.0f}",
                f"{fwd['delta_rss_mib']:,.0f}",
                f"{fwd['peak_after_build_mib'] - fwd['baseline_rss_mib']:,.0f}",
                f"{row['load']:.1f}",
            ]
        if backward:
            bwd = row.get("backward")
            cells.append(fmt_ms(bwd))
            ok = bwd is not None and "error" not in bwd
            cells.append(f"{bwd['peak_rss_mib']:,.0f} / {bwd['delta_rss_mib']:,.0f}" if ok else "—")
        lines.append(f"| {row['network']} | {shapes} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="timed forwards after one warm-up")
    parser.add_argument("--backward", action="store_true", help="also time forward+backward (own subprocess)")
    parser.add_argument("--only", nargs="+", choices=sorted(SPECS), help="run a subset")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per network")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--worker", choices=sorted(SPECS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.threads, args.reps, args.backward)))
        return

    import torch  # only for the version string: the parent process never builds a network

    load_start = os.getloadavg()
    started = datetime.now(timezone.utc)
    rows = []
    for name in args.only or SPECS:
        print(f"{name} ...", file=sys.stderr, flush=True)
        row = {"network": name, "note": SPECS[name].note, "load": os.getloadavg()[0]}
        row["forward"] = run_worker(name, args, backward=False)
        if args.backward:
            row["backward"] = run_worker(name, args, backward=True)
        rows.append(row)
    load_end = os.getloadavg()

    machine = (
        f"{cpu_name()}, nproc {os.cpu_count()}, torch {torch.__version__}, {args.threads} thread(s), "
        f"CPython {platform.python_version()}"
    )
    command = "python benchmarks/networks.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Face networks — CPU forward time and peak memory",
        "",
        f"- command: `{command.strip()}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine}",
        f"- load average (1/5/15 min) at start {', '.join(f'{x:.2f}' for x in load_start)}, "
        f"at end {', '.join(f'{x:.2f}' for x in load_end)}",
    ]
    busiest = max(load_start[0], load_end[0], *(row["load"] for row in rows))
    if busiest > BUSY_LOAD:
        lines.append(
            f"- **the machine was shared**: 1-min load reached {busiest:.2f} (> {BUSY_LOAD}) during the run "
            f"on {os.cpu_count()} cores (column *load*: 1-min load when that network started); "
            "times are pessimistic and noisy; memory figures are per process and largely unaffected"
        )
    lines += [
        f"- setup: batch {BATCH}, float32, random weights, eval mode; forward under `torch.no_grad()`; "
        f"median of {args.reps} timed calls after 1 warm-up; each network in a fresh subprocess",
        "- peak RSS: `ru_maxrss` after the timed calls; Δ RSS = peak − RSS measured after importing torch "
        "and the network's module and building the inputs (so Δ ≈ weights + activations + allocator slack)",
        "- of which built: the same high-water mark read right after constructing the network (≈ its weights "
        "plus init temporaries); Δ − built ≈ what the forward itself added",
    ]
    if args.backward:
        lines.append(
            "- fwd+bwd: `loss = out.square().mean()` (flow: its z output) backpropagated to the trainable "
            "parameters and to the inputs (frozen encoders pass gradients to images, as the identity loss "
            "needs), still in eval mode; separate subprocess, so its peak is its own"
        )
    lines += ["", *table_rows(rows, args.backward), "", "Notes:"]
    lines += [f"- {row['network']}: {row['note']}" for row in rows if row["note"]]
    table = "\n".join(lines)
    print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "networks.md").write_text(table + "\n")
    report = {
        "command": command,
        "date": started.isoformat(),
        "machine": machine,
        "threads": args.threads,
        "reps": args.reps,
        "batch": BATCH,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "rows": rows,
    }
    (args.out / "networks.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
