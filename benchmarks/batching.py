"""Faces per model call: the time per face of ``Anonymizer.run_model`` (anonymize, 256 px) by batch size.

The same faces go through the model in batches of 1, 2, 4, 8 … (every size sees the same number of faces),
the sizes interleaved within each rep so that load on a shared machine hits all of them alike; the table gives
the median time per face and its ratio to batch 1, as wall time and as the process's CPU time (on a shared
machine the CPU time is the steadier measure of the work; with one thread it is also what an idle core
takes). ``ifadit.photos.batch.DEFAULT_BATCH_SIZE`` is chosen from these ratios (the smallest batch within 5 %
of the best CPU time per face on the CPU, of the best wall time on an accelerator).

Model: the paper's architecture from ``recipes/ffhq256/flow.yaml`` with random weights (``--encoders timm``:
the lighter timm encoders, same generator); detection, alignment and paste-back are not timed (they run once
per photo whatever the batch; ``benchmarks/photos.py`` splits a photo's time by stage).

Run: ``OMP_NUM_THREADS=1 python benchmarks/batching.py [--device cpu] [--sizes 1 2 4 8] [--reps 2]``.
Results: ``results/batching_<device>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from machine import describe  # benchmarks/ is on sys.path when a script runs
from photos import build_random_model

REPO = Path(__file__).resolve().parents[1]
WITHIN = 1.05  # a batch size counts as best when its time per face is within 5 % of the fastest


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    device_name: str, sizes: list[int], faces: int, reps: int, encoders: str, warmup: int = 1
) -> dict[str, Any]:
    """Median seconds per face of ``run_model('anonymize')`` for each batch size."""
    import torch

    from ifadit.api import Anonymizer
    from ifadit.keys import SecretKey

    torch.manual_seed(0)
    device = torch.device(device_name)
    anonymizer = Anonymizer(build_random_model(encoders), device=device)
    secret = SecretKey.generate()
    size = anonymizer.resolution
    crops = torch.rand(faces, 3, size, size, device=device) * 2 - 1
    for _ in range(warmup):  # first calls: allocator, kernels, caches
        for batch in sizes:
            anonymizer.batch_size = batch
            anonymizer.run_model("anonymize", crops[: min(batch, faces)], secret)
    _sync(device)
    per_face: dict[int, list[float]] = {batch: [] for batch in sizes}
    cpu_per_face: dict[int, list[float]] = {batch: [] for batch in sizes}
    loads = []
    for _ in range(reps):
        for batch in sizes:
            anonymizer.batch_size = batch
            start, cpu_start = time.perf_counter(), time.process_time()
            anonymizer.run_model("anonymize", crops, secret)
            _sync(device)
            per_face[batch].append((time.perf_counter() - start) / faces)
            cpu_per_face[batch].append((time.process_time() - cpu_start) / faces)
            loads.append(os.getloadavg()[0])
    medians = {batch: statistics.median(times) for batch, times in per_face.items()}
    cpu_medians = {batch: statistics.median(times) for batch, times in cpu_per_face.items()}
    # the choice: CPU time on the CPU (steady under load), wall time on an accelerator (the host idles)
    basis = cpu_medians if device.type == "cpu" else medians
    best = min(basis.values())
    chosen = min(batch for batch, value in basis.items() if value <= best * WITHIN)
    return {
        "device": str(device),
        "encoders": encoders,
        "resolution": size,
        "faces_per_setting": faces,
        "reps": reps,
        "per_face_s": {str(b): v for b, v in per_face.items()},
        "median_per_face_s": {str(b): v for b, v in medians.items()},
        "ratio_to_batch_1": {str(b): v / medians[sizes[0]] for b, v in medians.items()},
        "cpu_per_face_s": {str(b): v for b, v in cpu_per_face.items()},
        "median_cpu_per_face_s": {str(b): v for b, v in cpu_medians.items()},
        "cpu_ratio_to_batch_1": {str(b): v / cpu_medians[sizes[0]] for b, v in cpu_medians.items()},
        "chosen_from": "cpu time" if device.type == "cpu" else "wall time",
        "chosen_batch_size": chosen,
        "load_average": [min(loads), max(loads)],
    }


def markdown(result: dict[str, Any], machine: str, command: str) -> str:
    lines = [
        f"# Batching: anonymize time per face by batch size ({result['device']})",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine}; load average "
        f"{result['load_average'][0]:.1f}-{result['load_average'][1]:.1f} during the run.",
        f"Model: {result['encoders']} encoders, {result['resolution']} px, random weights; "
        f"{result['faces_per_setting']} faces per setting, {result['reps']} reps, sizes interleaved.",
        f"Command: `{command}`",
        "",
        "| faces per call | wall s per face (median) | all reps | x batch 1 | CPU s per face (median) "
        "| all reps | x batch 1 |",
        "|---:|---:|---|---:|---:|---|---:|",
    ]
    for batch, value in result["median_per_face_s"].items():
        reps = ", ".join(f"{t:.3f}" for t in result["per_face_s"][batch])
        cpu_reps = ", ".join(f"{t:.3f}" for t in result["cpu_per_face_s"][batch])
        lines.append(
            f"| {batch} | {value:.3f} | {reps} | {result['ratio_to_batch_1'][batch]:.2f} "
            f"| {result['median_cpu_per_face_s'][batch]:.3f} | {cpu_reps} "
            f"| {result['cpu_ratio_to_batch_1'][batch]:.2f} |"
        )
    lines += [
        "",
        f"Chosen default (the smallest batch within 5 % of the best {result['chosen_from']} per face): "
        f"**{result['chosen_batch_size']}**",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--faces", type=int, default=8, help="faces per setting and rep")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--encoders", choices=("paper", "timm"), default="paper")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if sorted(args.sizes) != args.sizes or args.sizes[0] < 1 or args.faces < max(args.sizes):
        parser.error("--sizes must be increasing and >= 1, and --faces at least the largest size")
    result = measure(args.device, args.sizes, args.faces, args.reps, args.encoders)
    command = "python benchmarks/batching.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(result, describe(args.threads), command.strip())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"batching_{torch.device(args.device).type}"
    (out / f"{stem}.md").write_text(text, encoding="utf-8")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
