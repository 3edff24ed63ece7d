"""``ifadit sweep SPEC.yaml``: the command around :func:`ifadit.sweep.run_sweep` (arguments in ifadit/cli.py).

Exit status: 0 every child finished; 1 some child (or a prerequisite) failed — the summary and MLflow say
which and why; 2 a bad spec or option, Ray missing where it is needed, or a local store given to a Ray
cluster (one line on stderr, via the CLI's expected errors).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ifadit.sweep.runner import SweepError, SweepOptions, format_plan, plan, redact_uri, run_sweep
from ifadit.sweep.spec import SweepSpecError, expand_dotted, load_spec, parse_set_option


def _extra(items: list[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for item in items:
        key, value = parse_set_option(item)
        extra[key] = value
    return expand_dotted(extra)


def run_sweep_command(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, name=args.name)
    extra = _extra(args.set)
    if args.dry_run:
        rows = plan(spec, extra, check=True)
        print(format_plan(spec, rows))
        bad = [r for r in rows if r.problem]
        if bad:
            print(f"ifadit sweep: error: {len(bad)} of {len(rows)} children have invalid recipes",
                  file=sys.stderr)
            return 2
        return 0
    if args.jobs is not None and args.jobs < 1:
        raise SweepSpecError(f"--jobs must be >= 1, got {args.jobs}")
    for flag in ("cpus_per_child", "gpus_per_child"):
        if (getattr(args, flag) or 0) < 0:
            raise SweepSpecError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    options = SweepOptions(
        tracking_uri=args.tracking_uri,
        jobs=args.jobs,
        ray_address=args.ray_address or os.environ.get("RAY_ADDRESS") or None,
        cpus_per_child=args.cpus_per_child,
        gpus_per_child=args.gpus_per_child,
        extra=extra,
        results_dir=Path(args.results_dir) if args.results_dir else None,
        work_dir=Path(args.work_dir) if args.work_dir else None,
        command="ifadit sweep " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["sweep"] else [args.spec]),
    )
    try:
        result = run_sweep(spec, options)
    except SweepError as exc:
        print(f"ifadit sweep: error: {exc}", file=sys.stderr)
        return 1
    done = sum(o.status != "failed" for o in result.outcomes)
    print(f"sweep {result.name}: {done}/{len(result.outcomes)} children finished, "
          f"{len(result.failed)} failed; parent run {result.parent_run_id} "
          f"in {redact_uri(result.tracking_uri)}")
    for outcome in result.failed:
        print(f"  FAILED {outcome.combination.run_name} (run {outcome.run_id}): {outcome.error}")
    if result.summary_files:
        print(f"summary: {result.summary_files[0]}")
    return 1 if result.failed else 0
