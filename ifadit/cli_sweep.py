"""The ``ifadit sweep`` subcommand's options; the sweep machinery (MLflow, Ray) is imported only when it runs,
so other commands start without it."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ifadit.sweep.command import run_sweep_command

    return run_sweep_command(args)


def add_sweep_parser(sub: Any) -> None:
    """Add ``sweep`` to the ``ifadit`` subcommands ``sub``."""
    p = sub.add_parser("sweep", help="an ablation sweep: a child MLflow run per combination, then a summary")
    p.add_argument("spec", help="sweep spec YAML (e.g. benchmarks/ablations.yaml)")
    p.add_argument("--dry_run", action="store_true", help="list the children and check their recipes parse")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every child and prerequisite (YAML value), e.g. trainer.max_steps=5")
    p.add_argument("--name", help="sweep name (parent run, results folder); default: the spec's")
    p.add_argument("--jobs", type=int, help="children at once, as Ray tasks when > 1 (a local Ray runtime "
                   "without --ray_address); default 1, or as many as the Ray cluster holds")
    p.add_argument("--ray_address", help="run the children on this Ray cluster, HOST:PORT (default: "
                   "$RAY_ADDRESS); needs an MLflow server every node reaches as --tracking_uri")
    p.add_argument("--cpus_per_child", type=float, help="Ray CPUs (and torch threads) per child "
                   "(default: the cores / --jobs locally, 1 on a cluster)")
    p.add_argument("--gpus_per_child", type=float, default=0.0, help="Ray GPUs per child (default 0)")
    p.add_argument("--tracking_uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--results_dir", help="summary folder (default: benchmarks/results/<name>)")
    p.add_argument("--work_dir", help="children's checkpoints and logs (default: outputs/sweeps/<name>)")
    p.set_defaults(func=_cmd_sweep)
