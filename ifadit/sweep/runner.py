"""Run a sweep: one MLflow parent run, one child run per combination, trained and scored, then a summary.

Sequential children run in this process (a tiny fit costs seconds, a fresh Python with torch costs more);
``jobs > 1`` or a Ray address run each child as a Ray task (:mod:`ifadit.sweep.engine`), on a local Ray
runtime or across the nodes of a Ray cluster, each asking for its CPUs and GPUs.

Re-running a sweep finds its parent run by name in the experiment and skips every child whose hash already
has a finished, scored run under it; failed or interrupted children are tried again in a new run (the old
one is kept, tagged with the run that superseded it).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from ifadit.sweep.child import (
    TAG_ROLE,
    TAG_SWEEP,
    ChildJob,
    RecipeChecker,
    execute_child,
    one_line_error,
)
from ifadit.sweep.engine import TAG_ENGINE, TAG_HOST, RayEngine, check_shared_store
from ifadit.sweep.overrides import flatten
from ifadit.sweep.prerequisites import prerequisite_args, run_prerequisites
from ifadit.sweep.runs import (
    SweepError,
    child_runs,
    create_child,
    experiment_id,
    find_parent,
    is_done,
    latest_by_hash,
    redact_uri,
)
from ifadit.sweep.spec import Combination, SweepSpec
from ifadit.tracking import mlflow_uri_default

__all__ = [
    "ChildOutcome",
    "PlanRow",
    "SweepError",
    "SweepOptions",
    "SweepResult",
    "child_runs",
    "experiment_id",
    "find_parent",
    "format_plan",
    "is_done",
    "latest_by_hash",
    "plan",
    "prerequisite_args",
    "redact_uri",
    "run_prerequisites",
    "run_sweep",
]

RESULTS_ROOT = Path("benchmarks") / "results"
WORK_ROOT = Path("outputs") / "sweeps"
SPEC_ARTIFACT = "sweep/spec.yaml"


@dataclass
class SweepOptions:
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db
    jobs: int | None = None  # children at once; None: 1 in this process, or as many as a Ray cluster holds
    ray_address: str | None = None  # an existing Ray cluster (HOST:PORT); jobs > 1 alone: a local runtime
    cpus_per_child: float | None = None  # per child; default: the cores / jobs locally, 1 on a cluster
    gpus_per_child: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # --set overrides, for prerequisites and children
    results_dir: Path | None = None  # default benchmarks/results/<name>
    work_dir: Path | None = None  # default outputs/sweeps/<name>: checkpoints and worker logs
    log: Callable[[str], None] = print
    command: str | None = None  # the command line, quoted in the summary


@dataclass
class ChildOutcome:
    combination: Combination
    run_id: str
    status: str  # done | skipped | failed
    error: str = ""
    seconds: float = 0.0


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    tracking_uri: str
    outcomes: list[ChildOutcome]
    summary_files: list[Path]

    @property
    def failed(self) -> list[ChildOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


# -- the plan (dry run) --------------------------------------------------------------------------------------


@dataclass
class PlanRow:
    combination: Combination
    problem: str | None


def plan(spec: SweepSpec, extra: Mapping[str, Any] | None = None, check: bool = True,
         instantiate: bool = False) -> list[PlanRow]:
    """Every child the sweep would run, each recipe parsed (``check``) or also built (``instantiate``,
    with ``init_from`` cleared): a spec's mistakes show before hours of training, not during them."""
    rows = []
    checker = RecipeChecker()
    for combo in spec.combinations(extra):
        problem = checker.check(combo.config, instantiate=instantiate) if check else None
        rows.append(PlanRow(combo, problem))
    return rows


def format_plan(spec: SweepSpec, rows: Sequence[PlanRow]) -> str:
    lines = [f"sweep {spec.name}: {len(rows)} children from {spec.base} "
             f"({len(spec.settings())} settings x {len(spec.seeds)} seeds), experiment {spec.experiment}"]
    for pre in spec.prerequisites:
        state = "exists" if pre.creates.exists() else "will be trained"
        lines.append(f"  prerequisite {pre.config} -> {pre.creates} ({state})")
    if spec.judge:
        ckpt = spec.judge.checkpoint
        missing = ckpt is not None and not ckpt.exists()
        lines.append(f"  judge {spec.judge.recognizer}"
                     f"{' (missing now: a prerequisite must create it)' if missing else ''}")
    width = max((len(r.combination.run_name) for r in rows), default=0)
    for i, row in enumerate(rows, 1):
        combo = row.combination
        changes = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in flatten(combo.overrides).items())
        state = "ok" if row.problem is None else f"INVALID: {row.problem}"
        lines.append(f"  {i:>3}. {combo.run_name:<{width}}  {combo.hash}  {changes or '(base)'}  [{state}]")
    return "\n".join(lines)


# -- running -------------------------------------------------------------------------------------------------


def _job(spec: SweepSpec, combo: Combination, run_id: str, uri: str, work_dir: Path) -> ChildJob:
    judge = asdict(spec.judge) if spec.judge is not None else None
    return ChildJob(run_id=run_id, tracking_uri=uri, experiment=spec.experiment, config=combo.config,
                    work_dir=str(work_dir / combo.slug), stage=spec.scoring_stage, judge=judge,
                    keep_checkpoints=spec.keep_checkpoints)


def run_sweep(spec: SweepSpec, options: SweepOptions | None = None) -> SweepResult:
    """Run (or resume) a sweep; returns every child's outcome and the summary files written."""
    options = options or SweepOptions()
    uri = options.tracking_uri or mlflow_uri_default()
    if options.jobs is not None and options.jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {options.jobs}")
    parallel = bool(options.ray_address) or (options.jobs or 1) > 1
    if options.ray_address:
        check_shared_store(uri)
    work_dir = options.work_dir or WORK_ROOT / spec.name
    results_dir = options.results_dir or RESULTS_ROOT / spec.name
    combos = spec.combinations(options.extra)
    engine = RayEngine(options.ray_address, options.jobs, options.cpus_per_child,
                       options.gpus_per_child) if parallel else None

    client = MlflowClient(uri)
    try:
        exp_id = experiment_id(client, uri, spec.experiment)
    except SweepError:
        raise
    except Exception as exc:  # unreachable server, unwritable database: one line, not a stack of retries
        raise SweepError(f"cannot reach the MLflow store {redact_uri(uri)}: {one_line_error(exc)}") from None
    with contextlib.ExitStack() as stack:
        if engine is not None:
            stack.enter_context(engine)  # Ray started or joined, the children's size checked: before any run
        return _run(spec, options, client, uri, exp_id, combos, engine, work_dir, results_dir)


def _run(spec: SweepSpec, options: SweepOptions, client: MlflowClient, uri: str, exp_id: str,
         combos: list[Combination], engine: RayEngine | None, work_dir: Path,
         results_dir: Path) -> SweepResult:
    from ifadit.sweep.summary import summarize

    parallel = engine is not None
    parent = find_parent(client, exp_id, spec.name)
    if parent is None:
        parent_id = client.create_run(exp_id, run_name=spec.name,
                                      tags={TAG_SWEEP: spec.name, TAG_ROLE: "parent"}).info.run_id
    else:
        parent_id = parent.info.run_id
        client.update_run(parent_id, status="RUNNING")
        with contextlib.suppress(Exception):  # an earlier attempt's error no longer holds
            client.delete_tag(parent_id, "ifadit.sweep.error")
    client.set_tag(parent_id, "ifadit.sweep.children", str(len(combos)))
    client.set_tag(parent_id, "ifadit.sweep.base", str(spec.base))
    if spec.text:
        client.log_text(parent_id, spec.text, SPEC_ARTIFACT)
    if options.extra:
        client.log_text(parent_id, yaml.safe_dump(options.extra), "sweep/set_overrides.yaml")
    options.log(f"sweep {spec.name}: {len(combos)} children, parent run {parent_id} "
                f"({'resumed' if parent else 'new'}) in {redact_uri(uri)}")

    try:
        for i, line in enumerate(run_prerequisites(spec, options, uri, not parallel, work_dir)):
            client.set_tag(parent_id, f"ifadit.sweep.prerequisite.{i}", line)
        judge_ckpt = spec.judge.checkpoint if spec.judge is not None else None
        if judge_ckpt is not None and not judge_ckpt.exists():
            # every child would train and then fail at scoring: stop before any training
            raise SweepError(f"the judge checkpoint {judge_ckpt} does not exist and no prerequisite "
                             "created it")
    except SweepError as exc:
        client.set_tag(parent_id, "ifadit.sweep.error", str(exc)[:500])
        client.set_terminated(parent_id, "FAILED")
        raise

    existing = latest_by_hash(child_runs(client, exp_id, parent_id))
    outcomes: dict[str, ChildOutcome] = {}
    queue: deque[tuple[int, Combination]] = deque()
    for i, combo in enumerate(combos, 1):
        previous = existing.get(combo.hash)
        if previous is not None and is_done(previous):
            outcomes[combo.hash] = ChildOutcome(combo, previous.info.run_id, "skipped")
            options.log(f"[{i}/{len(combos)}] {combo.run_name}: finished earlier "
                        f"(run {previous.info.run_id}), skipped")
        else:
            queue.append((i, combo))

    def start(i: int, combo: Combination) -> ChildJob:
        run_id = create_child(client, exp_id, parent_id, spec, combo, existing.get(combo.hash))
        doing = "queued as a Ray task" if engine else "training"
        options.log(f"[{i}/{len(combos)}] {combo.run_name}: {doing} (run {run_id})")
        return _job(spec, combo, run_id, uri, Path(work_dir))

    def record(i: int, combo: Combination, job: ChildJob, ok: bool, error: str, seconds: float) -> None:
        outcomes[combo.hash] = ChildOutcome(combo, job.run_id, "done" if ok else "failed", error, seconds)
        verdict = f"done in {seconds:.0f} s" if ok else f"FAILED after {seconds:.0f} s: {error}"
        options.log(f"[{i}/{len(combos)}] {combo.run_name}: {verdict}")

    try:
        if engine is None:
            described = f"in-process, one child at a time, on {socket.gethostname()}"
            client.set_tag(parent_id, TAG_ENGINE, described)
            while queue:
                i, combo = queue.popleft()
                job = start(i, combo)
                client.set_tag(job.run_id, TAG_HOST, socket.gethostname())
                t0 = time.monotonic()
                ok = execute_child(job)
                error = "" if ok else client.get_run(job.run_id).data.tags.get("ifadit.sweep.error", "")
                record(i, combo, job, ok, error, time.monotonic() - t0)
        else:
            described = engine.describe()
            client.set_tag(parent_id, TAG_ENGINE, described)
            options.log(f"engine: {described}")
            engine.run(queue, start, record, client)
    except KeyboardInterrupt:
        client.set_tag(parent_id, "ifadit.sweep.error", "interrupted")
        client.set_terminated(parent_id, "KILLED")
        raise

    ordered = [outcomes[c.hash] for c in combos]
    files = summarize(client, spec, ordered, parent_id, results_dir, uri, options.command, options.extra,
                      engine=described)
    failed = [o for o in ordered if o.status == "failed"]
    client.set_tag(parent_id, "ifadit.sweep.failed", str(len(failed)))
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
    return SweepResult(spec.name, parent_id, uri, ordered, files)

