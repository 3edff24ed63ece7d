"""The metrics suite's speed: ``AnonymizationSuite`` on 256 SynthFaces test images at 64 px, on the CPU.

Goal: at most 60 s for the whole suite — anonymize with the key (and K-1 more keys), recover with
the key, a wrong key and a one-bit-off key, reconstruct, judge every image with the independent SynthFaces
judge, MTCNN on originals and anonymized images, PSNR / SSIM / FID / key AUROC / retrieval — update plus
compute. The images are read into memory first (not timed); one small warm-up batch runs before the clock.
Forward hooks split the time between the generator, the model's encoders, the judge and MTCNN.

Default model: the quickstart checkpoints (``make quickstart``) when present, else the quickstart
recipes' networks at their initial weights (same cost: the timing does not depend on the weights). Default
judge: the shipped one (``--judge synthfaces64-judge``; any ``NAME_OR_CKPT`` as in ``ifadit score``), at a
cosine threshold of 0.9 unless its spec sets one.

Run: ``OMP_NUM_THREADS=1 python benchmarks/metrics.py`` (options: --judge, --images, --batch_size,
--anonymizations, --threads, --with_dlib, --no_detector). Results: ``benchmarks/results/metrics.md`` and
``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch
from machine import cpu_name  # benchmarks/ is on sys.path when a script runs
from torch import nn

from ifadit.cli import _build_task
from ifadit.keys import SecretKey
from ifadit.lightning_cli import cli_main
from ifadit.metrics import AnonymizationSuite, MTCNNDetector, RecognizerFeatures
from ifadit.recognizers import Recognizer, Verification, build_recognizer, recognizer_label

GOAL_SECONDS = 60.0
ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "outputs" / "checkpoints" / "ifadit"


@contextmanager
def timed_modules(modules: dict[str, nn.Module]) -> Iterator[dict[str, float]]:
    """Seconds spent in each module's forward (outermost calls only)."""
    totals: dict[str, float] = defaultdict(float)
    starts: dict[str, list[float]] = defaultdict(list)
    handles = []
    for name, module in modules.items():
        def pre(_m, _args, name=name):
            starts[name].append(time.perf_counter())

        def post(_m, _args, _out, name=name):
            began = starts[name].pop()
            if not starts[name]:
                totals[name] += time.perf_counter() - began

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()


def build(args: argparse.Namespace) -> tuple[object, object, Recognizer, str]:
    if args.ckpt_path and Path(args.ckpt_path).is_file():
        task, datamodule = _build_task(args.config, args.ckpt_path, strict=True)
        source = f"trained checkpoint {args.ckpt_path}"
    else:
        cli = cli_main(["--config", args.config, "--model.init_from", "null", "--trainer.logger", "false"],
                       run=False)
        task, datamodule = cli.model, cli.datamodule
        source = f"initial weights of {args.config} (no checkpoint)"
    judge = build_recognizer(args.judge)
    if judge.verification is None:  # the suite needs a threshold; the timing does not depend on it
        judge.verification = Verification(0.9)
    return task, datamodule, judge, f"{source}; judge {recognizer_label(args.judge)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes/quickstart/compensator.yaml"))
    parser.add_argument("--ckpt_path", default=str(CKPT / "quickstart-compensator/last.ckpt"))
    parser.add_argument("--judge", default="synthfaces64-judge", metavar="NAME_OR_CKPT",
                        help="the judge: a registered name (default: the shipped SynthFaces judge) or "
                        "CKPT:config=RECIPE of a recognizer ifadit trained")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--anonymizations", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--with_dlib", action="store_true", help="add the dlib plugin as a second judge")
    parser.add_argument("--no_detector", action="store_true")
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task, datamodule, judge, source = build(args)
    model = task.model.eval()
    datamodule.batch_size = args.batch_size
    datamodule.setup("test")
    start = time.perf_counter()
    batches, seen = [], 0
    for batch in datamodule.test_dataloader():
        take = min(args.images - seen, batch["image"].shape[0])
        batches.append({"image": batch["image"][:take], "identity": batch["identity"][:take]})
        seen += take
        if seen >= args.images:
            break
    load_seconds = time.perf_counter() - start
    if seen < args.images:
        raise SystemExit(f"the test split has only {seen} images")
    size = batches[0]["image"].shape[-1]

    recognizers: dict[str, Recognizer] = {"judge": judge}
    if args.with_dlib:
        from ifadit import registry

        recognizers["dlib"] = registry.create("recognizers", "dlib")
    detector = None if args.no_detector else MTCNNDetector()

    def suite() -> AnonymizationSuite:
        return AnonymizationSuite(recognizers, num_anonymizations=args.anonymizations, detector=detector,
                                  fid_features=RecognizerFeatures(judge))

    secret = SecretKey.generate()
    warm = suite()
    warm.update(model, batches[0]["image"][:8], secret, batches[0]["identity"][:8])
    warm.compute()

    timed = {"generator": model.generator, "identity encoder": model.identity_encoder,
             "attribute encoder": model.attribute_encoder, "judge": judge}
    if model.compensator is not None:
        timed["compensator"] = model.compensator
    if detector is not None:
        timed["MTCNN"] = detector
    if "dlib" in recognizers:
        timed["dlib"] = recognizers["dlib"]
    measured = suite()
    with timed_modules(timed) as parts:
        cpu_start = time.process_time()
        start = time.perf_counter()
        for batch in batches:
            measured.update(model, batch["image"], secret, batch["identity"])
        update_seconds = time.perf_counter() - start
        start = time.perf_counter()
        results = measured.compute()
        compute_seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    total = update_seconds + compute_seconds
    parts = dict(parts)
    parts["rest (flow, key schemes, PSNR/SSIM/FID/AUROC updates, compute)"] = total - sum(parts.values())

    record = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} torch thread(s)",
        "load_average": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": source,
        "images": seen,
        "size": size,
        "batch_size": args.batch_size,
        "anonymizations": args.anonymizations,
        "recognizers": list(recognizers),
        "detector": detector is not None,
        "load_seconds": round(load_seconds, 2),
        "update_seconds": round(update_seconds, 2),
        "compute_seconds": round(compute_seconds, 3),
        "total_seconds": round(total, 2),
        "process_cpu_seconds": round(cpu_seconds, 2),
        "goal_seconds": GOAL_SECONDS,
        "meets_goal": total <= GOAL_SECONDS,
        "parts_seconds": {k: round(v, 2) for k, v in parts.items()},
        "metrics": len(results),
    }
    lines = [
        f"# Metrics suite speed ({record['date']})",
        "",
        f"{seen} SynthFaces test images at {size} px, batch {args.batch_size}, K = {args.anonymizations} "
        f"anonymizations, judges: {', '.join(recognizers)}, MTCNN: {'yes' if detector else 'no'}; "
        f"{record['machine']}, load average {record['load_average']} at the end; model: {source}.",
        "",
        "| what | seconds |",
        "|---|---:|",
        *[f"| {name} | {seconds:.2f} |" for name, seconds in record["parts_seconds"].items()],
        f"| **suite total (update + compute), wall clock** | **{total:.2f}** |",
        f"| goal | ≤ {GOAL_SECONDS:.0f} ({'met' if record['meets_goal'] else 'NOT met'}) |",
        f"| CPU time of this process over the same span | {cpu_seconds:.2f} |",
        "",
        f"Reading {seen} images from the SynthFaces cache (not in the total): {load_seconds:.2f} s. "
        f"{len(results)} numbers computed. Wall-clock time grows with the machine's load (other processes "
        "take the cores); the process CPU time does much less.",
    ]
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
