"""Run a sweep: one MLflow parent run, one child run per combination, trained and scored, then a summary.

Sequential children run in this process (a tiny fit costs seconds, a fresh Python with torch costs more);
``jobs > 1`` or ``devices`` run each child in a worker process (``python -m ifadit.sweep.worker``), with
``OMP_NUM_THREADS`` split between the jobs or one GPU (``CUDA_VISIBLE_DEVICES``) per job.

Re-running a sweep finds its parent run by name in the experiment and skips every child whose hash already
has a finished, scored run under it; failed or interrupted children are tried again in a new run (the old
one is kept, tagged with the run that superseded it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from ifadit.sweep.child import (
    STATE_DONE,
    TAG_HASH,
    TAG_LABEL,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SEED,
    TAG_STATE,
    TAG_SUPERSEDED,
    TAG_SWEEP,
    ChildJob,
    RecipeChecker,
    execute_child,
    one_line_error,
    record_failure,
)
from ifadit.sweep.spec import Combination, SweepSpec, expand_dotted, flatten
from ifadit.tracking import default_artifact_location, mlflow_uri_default, prepare_tracking_uri

RESULTS_ROOT = Path("benchmarks") / "results"
WORK_ROOT = Path("outputs") / "sweeps"
SPEC_ARTIFACT = "sweep/spec.yaml"


class SweepError(RuntimeError):
    """A sweep that cannot go on (a prerequisite failed, the tracking store is unreachable)."""


@dataclass
class SweepOptions:
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db
    jobs: int = 1
    devices: list[str] | None = None  # one job per device (CUDA_VISIBLE_DEVICES)
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


def redact_uri(uri: str) -> str:
    """A tracking URI fit to print or store: no user:password@ part."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


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


# -- MLflow bookkeeping --------------------------------------------------------------------------------------


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The experiment's id, created when missing (a sqlite store keeps its artifacts beside the database)."""
    prepare_tracking_uri(uri, name, default_artifact_location(uri, name))
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=default_artifact_location(uri, name))
    if experiment.lifecycle_stage == "deleted":
        raise SweepError(f"MLflow experiment {name!r} is deleted: restore it or name another experiment")
    return experiment.experiment_id


def find_parent(client: MlflowClient, experiment: str, name: str) -> Run | None:
    """The newest parent run of sweep ``name`` in the experiment, if any."""
    runs = _search(client, experiment, f"tags.`{TAG_ROLE}` = 'parent' and tags.`{TAG_SWEEP}` = '{name}'")
    return max(runs, key=lambda r: r.info.start_time) if runs else None


def child_runs(client: MlflowClient, experiment: str, parent_id: str) -> list[Run]:
    return _search(client, experiment, f"tags.`{TAG_PARENT}` = '{parent_id}'")


def is_done(run: Run) -> bool:
    return run.info.status == "FINISHED" and run.data.tags.get(TAG_STATE) == STATE_DONE


def latest_by_hash(runs: Sequence[Run]) -> dict[str, Run]:
    """Per child hash, its finished run if there is one, else its newest attempt."""
    best: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        key = run.data.tags.get(TAG_HASH)
        if key and not (key in best and is_done(best[key]) and not is_done(run)):
            best[key] = run
    return best


def _create_child(client: MlflowClient, experiment: str, parent: str, spec: SweepSpec, combo: Combination,
                  previous: Run | None) -> str:
    tags = {TAG_PARENT: parent, TAG_SWEEP: spec.name, TAG_ROLE: "child", TAG_HASH: combo.hash,
            TAG_LABEL: combo.label, TAG_STATE: "queued"}
    if combo.seed is not None:
        tags[TAG_SEED] = str(combo.seed)
    run = client.create_run(experiment, run_name=combo.run_name, tags=tags)
    run_id = run.info.run_id
    params = {f"sweep.{axis}": value for axis, value in combo.choices.items()}
    params["sweep.setting"] = combo.label
    if combo.seed is not None:
        params["sweep.seed"] = str(combo.seed)
    for key, value in flatten(combo.overrides).items():
        params[f"sweep.override.{key}"[:250]] = json.dumps(value, default=str)[:6000]
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    if previous is not None:
        with contextlib.suppress(Exception):
            client.set_tag(previous.info.run_id, TAG_SUPERSEDED, run_id)
            if previous.info.status == "RUNNING":  # its sweep was killed: it will never finish
                record_failure(client, previous.info.run_id, "interrupted: the sweep stopped in this child")
                client.set_terminated(previous.info.run_id, "KILLED")
    return run_id


# -- prerequisites -------------------------------------------------------------------------------------------


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
            if options.devices:
                env["CUDA_VISIBLE_DEVICES"] = options.devices[0]
            with open(log, "w") as out:
                code = subprocess.call([sys.executable, "-m", "ifadit.cli", *args], stdout=out,
                                       stderr=subprocess.STDOUT, env=env)
            if code != 0:
                raise SweepError(
                    f"prerequisite {pre.config} failed (exit {code}): {_last_line(log)}; log: {log}"
                )
        if not pre.creates.exists():
            raise SweepError(f"prerequisite {pre.config} finished but did not create {pre.creates}")
        options.log(f"prerequisite {pre.config}: done in {time.monotonic() - start:.0f} s")
        report.append(f"trained {pre.creates}")
    return report


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


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
        lines.append(f"  judge {spec.judge.config} {spec.judge.ckpt}"
                     f"{'' if spec.judge.ckpt.exists() else ' (missing now: a prerequisite must create it)'}")
    width = max((len(r.combination.run_name) for r in rows), default=0)
    for i, row in enumerate(rows, 1):
        combo = row.combination
        changes = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in flatten(combo.overrides).items())
        state = "ok" if row.problem is None else f"INVALID: {row.problem}"
        lines.append(f"  {i:>3}. {combo.run_name:<{width}}  {combo.hash}  {changes or '(base)'}  [{state}]")
    return "\n".join(lines)


# -- running -------------------------------------------------------------------------------------------------


def _threads_per_job(jobs: int) -> int:
    total = os.environ.get("OMP_NUM_THREADS")
    cores = int(total) if total and total.isdigit() else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


def _job(spec: SweepSpec, combo: Combination, run_id: str, uri: str, work_dir: Path) -> ChildJob:
    judge = None
    if spec.judge is not None:
        judge = {"config": str(spec.judge.config), "ckpt": str(spec.judge.ckpt), "split": spec.judge.split,
                 "max_batches": spec.judge.max_batches}
    return ChildJob(run_id=run_id, tracking_uri=uri, experiment=spec.experiment, config=combo.config,
                    work_dir=str(work_dir / combo.slug), stage=spec.scoring_stage, judge=judge,
                    keep_checkpoints=spec.keep_checkpoints)


def _finish_worker(client: MlflowClient, job: ChildJob, code: int, log: Path) -> tuple[bool, str]:
    """After a worker exits: its run's own verdict, or FAILED with the exit status when the worker died
    before recording one. The worker's log becomes the run's ``logs/child.log`` artifact."""
    with contextlib.suppress(Exception):
        client.log_artifact(job.run_id, str(log), "logs")
    run = client.get_run(job.run_id)
    if is_done(run):
        return True, ""
    error = run.data.tags.get("ifadit.sweep.error")
    if run.info.status == "RUNNING" or not error:
        error = f"worker exited with status {code}: {_last_line(log)}"
        record_failure(client, job.run_id, error)
    return False, error


def run_sweep(spec: SweepSpec, options: SweepOptions | None = None) -> SweepResult:
    """Run (or resume) a sweep; returns every child's outcome and the summary files written."""
    from ifadit.sweep.summary import summarize

    options = options or SweepOptions()
    uri = options.tracking_uri or mlflow_uri_default()
    if options.jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {options.jobs}")
    parallel = options.jobs > 1 or bool(options.devices)
    slots = len(options.devices) if options.devices else options.jobs
    work_dir = options.work_dir or WORK_ROOT / spec.name
    results_dir = options.results_dir or RESULTS_ROOT / spec.name
    combos = spec.combinations(options.extra)

    client = MlflowClient(uri)
    try:
        exp_id = experiment_id(client, uri, spec.experiment)
    except SweepError:
        raise
    except Exception as exc:  # unreachable server, unwritable database: one line, not a stack of retries
        raise SweepError(f"cannot reach the MLflow store {redact_uri(uri)}: {one_line_error(exc)}") from None
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
        if spec.judge is not None and not spec.judge.ckpt.exists():
            # every child would train and then fail at scoring: stop before any training
            raise SweepError(f"the judge checkpoint {spec.judge.ckpt} does not exist and no prerequisite "
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
        run_id = _create_child(client, exp_id, parent_id, spec, combo, existing.get(combo.hash))
        options.log(f"[{i}/{len(combos)}] {combo.run_name}: training (run {run_id})")
        return _job(spec, combo, run_id, uri, Path(work_dir))

    def record(i: int, combo: Combination, job: ChildJob, ok: bool, error: str, seconds: float) -> None:
        outcomes[combo.hash] = ChildOutcome(combo, job.run_id, "done" if ok else "failed", error, seconds)
        verdict = f"done in {seconds:.0f} s" if ok else f"FAILED after {seconds:.0f} s: {error}"
        options.log(f"[{i}/{len(combos)}] {combo.run_name}: {verdict}")

    try:
        if not parallel:
            while queue:
                i, combo = queue.popleft()
                job = start(i, combo)
                t0 = time.monotonic()
                ok = execute_child(job)
                error = "" if ok else client.get_run(job.run_id).data.tags.get("ifadit.sweep.error", "")
                record(i, combo, job, ok, error, time.monotonic() - t0)
        else:
            _run_parallel(queue, start, record, client, options, slots)
    except KeyboardInterrupt:
        client.set_tag(parent_id, "ifadit.sweep.error", "interrupted")
        client.set_terminated(parent_id, "KILLED")
        raise

    ordered = [outcomes[c.hash] for c in combos]
    files = summarize(client, spec, ordered, parent_id, results_dir, uri, options.command, options.extra)
    failed = [o for o in ordered if o.status == "failed"]
    client.set_tag(parent_id, "ifadit.sweep.failed", str(len(failed)))
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
    return SweepResult(spec.name, parent_id, uri, ordered, files)


def _run_parallel(
    queue: deque[tuple[int, Combination]],
    start: Callable[[int, Combination], ChildJob],
    record: Callable[..., None],
    client: MlflowClient,
    options: SweepOptions,
    slots: int,
) -> None:
    """Keep ``slots`` worker processes busy; each child's output goes to ``<work dir>/child.log``."""
    free_devices = deque(options.devices or [])
    threads = str(_threads_per_job(slots))
    running: list[tuple[subprocess.Popen, int, Combination, ChildJob, Path, str | None, float]] = []
    try:
        while queue or running:
            while queue and len(running) < slots:
                i, combo = queue.popleft()
                job = start(i, combo)
                folder = Path(job.work_dir)
                folder.mkdir(parents=True, exist_ok=True)
                job_file = folder / "job.json"
                job_file.write_text(json.dumps(job.to_json(), indent=1, default=str))
                log = folder / "child.log"
                env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
                device = free_devices.popleft() if free_devices else None
                if device is not None:
                    env["CUDA_VISIBLE_DEVICES"] = device
                    client.set_tag(job.run_id, "ifadit.sweep.device", device)
                with open(log, "w") as out:
                    proc = subprocess.Popen([sys.executable, "-m", "ifadit.sweep.worker", str(job_file)],
                                            stdout=out, stderr=subprocess.STDOUT, env=env)
                running.append((proc, i, combo, job, log, device, time.monotonic()))
            time.sleep(0.2)
            for entry in list(running):
                proc, i, combo, job, log, device, t0 = entry
                code = proc.poll()
                if code is None:
                    continue
                running.remove(entry)
                if device is not None:
                    free_devices.append(device)
                ok, error = _finish_worker(client, job, code, log)
                record(i, combo, job, ok, error, time.monotonic() - t0)
    except KeyboardInterrupt:
        for proc, *_ in running:
            proc.terminate()
        for proc, _, _, job, _, _, _ in running:
            with contextlib.suppress(Exception):
                proc.wait(timeout=30)
            record_failure(client, job.run_id, "interrupted")
        raise
