"""The GPU path in one prepared script: steps of each ffhq256 phase, anonymize throughput, peak memory.

On a CUDA machine (the default when one is present): ``--steps`` (20) training steps of each phase recipe of
``recipes/ffhq256/`` (phase 1 ``disentangle.yaml``, phase 2 ``flow.yaml``; ``flow-ddp.yaml`` is phase 2
under DDP on several GPUs and is not run on one) with random weights (no checkpoint is read: the identity
encoder's ``allow_random_init``, no pSp backbone, no StyleGAN2 checkpoint, no ``init_from``), on SynthFaces
rendered at 256 px, in bf16 mixed precision, through ``ifadit fit``'s own LightningCLI; then the throughput of
``Anonymizer.run_model('anonymize')`` with the phase-2 model at 1, 8 and 32 faces per call, in float32 (what
``ifadit anonymize`` runs) and under bf16 autocast; and the peak GPU memory of each. The first steps of a
phase (``--warmup``) are left out of its step time (cuDNN autotuning, allocator growth).

On the CPU it runs the same code on tiny components (``--tiny``, the default without CUDA: 32 px, timm
ResNet-10t encoders, a small StyleGAN2) in float32, so ``--steps 1`` checks the whole script in seconds; the
tests run that.

Run: ``python benchmarks/gpu.py`` (GPU) or ``OMP_NUM_THREADS=1 python benchmarks/gpu.py --steps 1`` (CPU).
Results: ``results/gpu.md`` and ``results/gpu.json`` (``gpu_cpu.*`` for a CPU run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback
from machine import describe  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
PHASES = ("disentangle", "flow")
RANDOM_WEIGHTS = [  # the ffhq256 recipes' pretrained parts, left random
    "--model.identity_encoder.init_args.allow_random_init=true",
    "--model.attribute_encoder.init_args.backbone_checkpoint=null",
    "--model.generator.init_args.checkpoint=null",
]
TINY = {  # --tiny: the recipes' structure with components small enough for a CPU
    "identity_encoder": {
        "class_path": "timm",
        "init_args": {"backbone": "resnet10t", "embedding_dim": 64, "in_size": 32},
    },
    "attribute_encoder": {
        "class_path": "timm",
        "init_args": {"backbone": "resnet10t", "n_styles": 8, "style_dim": 64},
    },
    "mapper": {
        "class_path": "latent",
        "init_args": {"id_dim": 64, "style_dim": 64, "n_styles": 8, "hidden": 64},
    },
    "generator": {
        "class_path": "stylegan2",
        "init_args": {"size": 32, "style_dim": 64, "n_mlp": 2, "max_channels": 32, "checkpoint": None},
    },
    "flow": {"class_path": "allinone", "init_args": {"dim": 64, "cond_dim": 64, "num_blocks": 2}},
    "key_scheme": {"class_path": "mapping", "init_args": {"dim": 64}},
    "compensator": {"class_path": "compensator", "init_args": {"dim": 64, "hidden": [128]}},
}


class StepTimer(Callback):
    """Wall time of each training step (the device synchronised at both ends), and peak GPU memory."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        _sync()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        _sync()
        self.times.append(time.perf_counter() - self._start)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def fit_args(phase: str, steps: int, tiny: bool, cuda: bool, data_root: Path, precision: str) -> list[str]:
    """The ``ifadit fit`` arguments of one phase: its recipe, random weights, SynthFaces, no logging."""
    size = 32 if tiny else 256
    args = [
        "fit",
        "--config",
        str(REPO / "recipes" / "ffhq256" / f"{phase}.yaml"),
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.precision={precision}",
        f"--trainer.accelerator={'gpu' if cuda else 'cpu'}",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={data_root / 'runs'}",
        "--checkpoint.monitor=null",
        "--checkpoint.save_top_k=0",
        "--checkpoint.save_last=false",
        "--image_grid.every_n_steps=0",
        "--image_grid.on_validation=false",
        "--data.source=synthfaces",
        f"--data.root={data_root / f'synthfaces{size}'}",
        f"--data.size={size}",
        "--data.num_identities=24",
        "--data.images_per_identity=8",
        f"--data.num_workers={4 if cuda else 0}",
    ]
    if phase != "disentangle":
        args.append("--model.init_from=null")
    if tiny:
        for name, spec in TINY.items():
            if phase == "disentangle" and name in ("flow", "key_scheme", "compensator"):
                continue
            args.append(f"--model.{name}={json.dumps(spec)}")
    else:
        args += RANDOM_WEIGHTS
    return args


def run_phase(args: list[str], warmup: int) -> tuple[dict[str, Any], Any]:
    """One phase's steps; its timing row and the trained model."""
    from ifadit.lightning_cli import cli_main

    timer = StepTimer()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-weight and small-dataset warnings: expected here
        cli = cli_main(args, trainer_defaults={"callbacks": [timer]})
    wall = time.perf_counter() - start
    timed = timer.times[warmup:] if len(timer.times) > warmup else timer.times
    batch = int(cli.datamodule.batch_size)
    step = statistics.median(timed)
    row = {
        "steps": len(timer.times),
        "timed_steps": len(timed),
        "batch_size": batch,
        "median_step_s": step,
        "images_per_s": batch / step,
        "fit_wall_s": wall,
        "peak_gib": _peak_gib(),
        "params_millions": sum(p.numel() for p in cli.model.parameters()) / 1e6,
    }
    return row, cli.model.model


def anonymize_throughput(
    model: Any, device: torch.device, sizes: list[int], faces: int
) -> list[dict[str, Any]]:
    """Faces per second of ``run_model('anonymize')`` at each batch size, float32 and (on CUDA) bf16 autocast,
    with the peak GPU memory of each."""
    from ifadit.api import Anonymizer
    from ifadit.keys import SecretKey

    anonymizer = Anonymizer(model, device=device)
    secret = SecretKey.generate()
    resolution = anonymizer.resolution
    rows = []
    modes = ["float32", "bf16-autocast"] if device.type == "cuda" else ["float32"]
    for mode in modes:
        for size in sizes:
            anonymizer.batch_size = size
            count = max(faces, size)
            crops = torch.rand(count, 3, resolution, resolution, device=device) * 2 - 1
            context = (
                torch.autocast("cuda", dtype=torch.bfloat16)
                if mode != "float32"
                else torch.autocast(device.type, enabled=False)
            )
            try:
                with context:
                    anonymizer.run_model("anonymize", crops[:size], secret)  # warm-up at this size
                    _sync()
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    start = time.perf_counter()
                    anonymizer.run_model("anonymize", crops, secret)
                    _sync()
            except RuntimeError as exc:  # e.g. out of memory at the largest batch: recorded, not fatal
                rows.append({"mode": mode, "batch_size": size, "error": str(exc).splitlines()[0]})
                continue
            wall = time.perf_counter() - start
            rows.append(
                {
                    "mode": mode,
                    "batch_size": size,
                    "faces": count,
                    "faces_per_s": count / wall,
                    "ms_per_face": 1000 * wall / count,
                    "peak_gib": _peak_gib(),
                }
            )
    return rows


def markdown(result: dict[str, Any]) -> str:
    gib = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [
        f"# GPU path: ffhq256 phases and anonymize throughput ({result['device']})",
        "",
        f"{result['date']}; {result['machine']}; precision {result['precision']}; "
        f"{'tiny components (CPU check)' if result['tiny'] else 'the recipes components, random weights'}.",
        f"Command: `{result['command']}`",
        "",
        "| phase | params (M) | batch | steps (timed) | median s/step | images/s | peak GPU GiB "
        "| fit wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase, row in result["phases"].items():
        if "error" in row:
            lines.append(f"| {phase} | failed: {row['error']} |||||||")
            continue
        lines.append(
            f"| {phase} | {row['params_millions']:.1f} | {row['batch_size']} "
            f"| {row['steps']} ({row['timed_steps']}) "
            f"| {row['median_step_s']:.3f} | {row['images_per_s']:.1f} | {gib(row['peak_gib'])} "
            f"| {row['fit_wall_s']:.1f} |"
        )
    lines += [
        "",
        "| anonymize | faces per call | faces/s | ms per face | peak GPU GiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["anonymize"]:
        if "error" in row:
            lines.append(f"| {row['mode']} | {row['batch_size']} | failed: {row['error']} |||")
            continue
        lines.append(
            f"| {row['mode']} | {row['batch_size']} | {row['faces_per_s']:.2f} | {row['ms_per_face']:.1f} "
            f"| {gib(row['peak_gib'])} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per phase (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the step time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--tiny",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tiny components (default: on without CUDA)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32], help="anonymize batch sizes")
    parser.add_argument("--faces", type=int, default=64, help="faces per anonymize measurement")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--data_root", help="SynthFaces cache and run folder (default: a temporary folder)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    tiny = (not cuda) if args.tiny is None else args.tiny
    precision = "bf16-mixed" if cuda else "32-true"  # bf16 is emulated, and slow, on most CPUs
    if not cuda:
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ifadit-gpu-") as scratch:
        root = Path(args.data_root or scratch)
        phases, model = {}, None
        for phase in args.phases:  # a phase that fails (out of memory, ...) is recorded, the others go on
            try:
                row, model = run_phase(fit_args(phase, args.steps, tiny, cuda, root, precision), args.warmup)
            except Exception as exc:  # the table says what failed
                phases[phase] = {
                    "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                }
                print(f"{phase}: failed: {phases[phase]['error']}", file=sys.stderr)
                continue
            phases[phase] = row
            print(f"{phase}: {row['median_step_s']:.3f} s/step", file=sys.stderr)
            if cuda:
                torch.cuda.empty_cache()
        rows = []
        if model is not None and model.keyed:
            rows = anonymize_throughput(model.to(device), device, args.sizes, args.faces)
    result = {
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "machine": describe(torch.get_num_threads()),
        "precision": precision,
        "tiny": tiny,
        "command": "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "phases": phases,
        "anonymize": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu" if cuda else "gpu_cpu"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
