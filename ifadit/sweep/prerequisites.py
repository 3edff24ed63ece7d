"""Sweep prerequisites: fits run once before the children (the shared phase-1 checkpoint).

Each is skipped when the file it ``creates`` exists; it runs in this process for a sequential sweep, else in
a child ``ifadit fit`` on the machine that runs the sweep (before any Ray task), its output in
``<work dir>/prerequisites/<recipe>.log``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ifadit.sweep.child import one_line_error
from ifadit.sweep.overrides import expand_dotted
from ifadit.sweep.runs import SweepError

if TYPE_CHECKING:
    from ifadit.sweep.runner import SweepOptions
    from ifadit.sweep.spec import SweepSpec


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def prerequisite_args(config: Path, overrides: Mapping[str, Any]) -> list[str]:
    """``fit --config RECIPE [--config OVERRIDES]``: the recipe by its path, so the run and its checkpoint
    folder get the names ``ifadit fit --config RECIPE`` gives them (what ``creates`` points at)."""
    args = ["fit", "--config", str(config)]
    if overrides:
        args += ["--config", yaml.safe_dump(expand_dotted(overrides), sort_keys=False)]
    return args


def run_prerequisites(spec: SweepSpec, options: SweepOptions, uri: str, in_process: bool,
                      work_dir: Path) -> list[str]:
    """Fit every prerequisite whose ``creates`` is missing, in order; a failure stops the sweep."""
    from ifadit.lightning_cli import cli_main

    report = []
    for pre in spec.prerequisites:
        if pre.creates.exists():
            options.log(f"prerequisite {pre.config}: {pre.creates} exists, not retrained")
            report.append(f"found {pre.creates}")
            continue
        options.log(f"prerequisite {pre.config}: training (creates {pre.creates})")
        args = prerequisite_args(pre.config, {**pre.overrides, **options.extra})
        start = time.monotonic()
        if in_process:
            try:
                with _environment(MLFLOW_TRACKING_URI=uri):
                    cli_main(args, parser_kwargs={"exit_on_error": False})
            except Exception as exc:
                raise SweepError(f"prerequisite {pre.config} failed: {one_line_error(exc)}") from None
        else:
            log = work_dir / "prerequisites" / f"{pre.config.stem}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
            with open(log, "w") as out:
                code = subprocess.call([sys.executable, "-m", "ifadit.cli", *args], stdout=out,
                                       stderr=subprocess.STDOUT, env=env)
            if code != 0:
                raise SweepError(
                    f"prerequisite {pre.config} failed (exit {code}): {last_line(log)}; log: {log}"
                )
        if not pre.creates.exists():
            raise SweepError(f"prerequisite {pre.config} finished but did not create {pre.creates}")
        options.log(f"prerequisite {pre.config}: done in {time.monotonic() - start:.0f} s")
        report.append(f"trained {pre.creates}")
    return report


def last_line(path: Path) -> str:
    """The last non-blank line of a log (cut to 300 characters), to name a failure in one line."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
