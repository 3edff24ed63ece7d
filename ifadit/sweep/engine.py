"""Parallel sweep children as Ray tasks: on a local Ray runtime (``--jobs N``) or an existing Ray cluster
(``--ray-address HOST:PORT`` or ``RAY_ADDRESS``).

Ray, not a pool of our own: a lab's GPU nodes already form (or can form, with ``ray start``) a cluster that
places work by the resources it asks for, so a child that asks for one GPU gets one, on whichever node has it
free. Each child is one task that runs :func:`ifadit.sweep.child.execute_child` — the code path of an
in-process child — in the sweep's folder, logging to the tracking URI the sweep hands it. Tasks are never
retried by Ray (``max_retries=0``): a child whose process dies is recorded failed, and the sweep's own resume
retries it in a new run, where the failure stays visible.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from ifadit.sweep.child import ChildJob, execute_child, one_line_error, record_failure
from ifadit.sweep.overrides import SweepSpecError
from ifadit.sweep.runs import SweepError, is_done, redact_uri

TAG_NODE = "ifadit.sweep.node"  # the Ray node id a child ran on
TAG_HOST = "ifadit.sweep.host"  # that node's host name
TAG_ENGINE = "ifadit.sweep.engine"  # on the parent: how its children ran
CHILD_LOG = "child.log"
INSTALL_HINT = "pip install 'ifadit[ray]'"
# Tracking stores that live on the machine that runs the sweep: other nodes cannot write them.
_LOCAL_SCHEMES = ("", "file", "sqlite")


def import_ray(why: str) -> Any:
    """The ``ray`` module, or one line saying how to get it."""
    try:
        import ray
    except ImportError:
        raise SweepSpecError(f"{why} runs the children as Ray tasks and Ray is not installed: "
                             f"{INSTALL_HINT}") from None
    return ray


def check_shared_store(uri: str) -> None:
    """A cluster's children log from other machines: a sqlite file or a local folder here is out of their
    reach (and concurrent writers over a network file system corrupt sqlite), so refuse it up front."""
    if urlparse(uri).scheme.lower() in _LOCAL_SCHEMES or uri.lower().startswith("sqlite"):
        raise SweepSpecError(f"--ray-address: the tracking URI {redact_uri(uri)} is a store on this machine "
                             "that other nodes cannot write; start an MLflow server and pass "
                             "--tracking-uri http://HOST:PORT")


def local_threads(jobs: int) -> int:
    """CPU threads per child on a local runtime: this machine's cores (or ``OMP_NUM_THREADS``) shared out."""
    total = os.environ.get("OMP_NUM_THREADS")
    cores = int(total) if total and total.isdigit() else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """The process's stdout and stderr (file descriptors, so Lightning's and C++ output too) into ``path``
    while a child runs; a Ray worker's own output is restored afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "w") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def run_child_task(job_data: dict[str, Any], cwd: str, threads: int) -> dict[str, Any]:
    """One child inside a Ray worker: tag its run with the node, train and score it in the sweep's folder
    (recipe paths are relative to it: a cluster's nodes see it at the same path on a shared file system),
    its output in ``<work dir>/child.log``, which becomes the run's ``logs/child.log``."""
    import ray
    import torch

    job = ChildJob.from_json(job_data)
    node = ray.get_runtime_context().get_node_id()
    host = socket.gethostname()
    client = MlflowClient(job.tracking_uri)
    client.set_tag(job.run_id, TAG_NODE, node)
    client.set_tag(job.run_id, TAG_HOST, host)
    previous = os.getcwd()
    os.chdir(cwd)
    torch.set_num_threads(threads)
    try:
        log = Path(job.work_dir) / CHILD_LOG
        with _output_to(log):
            ok = execute_child(job)
        with contextlib.suppress(Exception):
            client.log_artifact(job.run_id, str(log), "logs")
    finally:
        os.chdir(previous)
    return {"ok": ok, "node": node, "host": host}


@dataclass
class _Running:
    index: int
    combination: Any
    job: ChildJob
    started: float


class RayEngine:
    """Starts or joins Ray, submits children within ``limit`` at a time, and turns each task's end (a
    result, an exception, a dead worker) into the child's verdict."""

    def __init__(self, address: str | None, jobs: int | None, cpus_per_child: float | None,
                 gpus_per_child: float) -> None:
        self.ray = import_ray("--ray-address" if address else f"--jobs {jobs}")
        self.address = address
        self.limit = jobs
        cpus = cpus_per_child if cpus_per_child else (1 if address else local_threads(jobs or 1))
        self.cpus = float(cpus)
        self.gpus = float(gpus_per_child)
        self.threads = max(1, int(self.cpus))
        self._started = False

    def __enter__(self) -> RayEngine:
        import logging

        ray = self.ray
        if not ray.is_initialized():
            common = {"log_to_driver": False, "logging_level": logging.WARNING}
            try:
                if self.address:
                    ray.init(address=self.address, **common)
                else:
                    # a runtime of our own even when a cluster runs on this machine ("local", not "auto");
                    # room for --jobs children of the asked size, whatever this machine's core count
                    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                    ray.init(address="local", num_cpus=max(1, int(self.cpus * (self.limit or 1))),
                             include_dashboard=False, **common)
            except Exception as exc:
                where = f"join the Ray cluster at {self.address}" if self.address else "start Ray here"
                raise SweepError(f"cannot {where}: {one_line_error(exc)}") from None
            self._started = True
        try:
            self._check_fits()
        except BaseException:
            self.__exit__()  # __exit__ is not called when __enter__ raises: leave no runtime or connection
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self.ray.shutdown()

    def _check_fits(self) -> None:
        """A child bigger than every node would wait forever in Ray's queue: say so now."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        fits = [n for n in nodes if n["Resources"].get("CPU", 0) >= self.cpus
                and n["Resources"].get("GPU", 0) >= self.gpus]
        if not fits:
            biggest = max(((n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes),
                          default=(0, 0))
            raise SweepSpecError(f"no Ray node can hold a child of {self.cpus:g} CPUs and {self.gpus:g} GPUs "
                             f"(the largest has {biggest[0]:g} CPUs, {biggest[1]:g} GPUs): lower "
                             "--cpus-per-child or --gpus-per-child")

    def describe(self) -> str:
        """The engine in one line, for the parent run and the summary."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        total = self.ray.cluster_resources()
        where = f"cluster at {self.address}" if self.address else "local runtime"
        return (f"ray {self.ray.__version__} {where}: {len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, "
                f"{total.get('GPU', 0):g} GPUs; each child {self.cpus:g} CPUs, {self.gpus:g} GPUs"
                + (f", at most {self.limit} at once" if self.limit else ""))

    def run(self, queue: Any, start: Callable[[int, Any], ChildJob], record: Callable[..., None],
            client: MlflowClient) -> None:
        """Run every queued ``(index, combination)``: ``start`` makes its run, ``record`` gets the verdict."""
        remote = self.ray.remote(run_child_task)
        cwd = os.getcwd()
        pending: dict[Any, _Running] = {}
        try:
            while queue or pending:
                while queue and (self.limit is None or len(pending) < self.limit):
                    index, combo = queue.popleft()
                    job = start(index, combo)
                    ref = remote.options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0,
                                         retry_exceptions=False, name=f"ifadit-sweep {combo.run_name}"
                                         ).remote(job.to_json(), cwd, self.threads)
                    pending[ref] = _Running(index, combo, job, time.monotonic())
                ready, _ = self.ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    item = pending.pop(ref)
                    ok, error = self._verdict(client, item.job, ref)
                    record(item.index, item.combination, item.job, ok, error,
                           time.monotonic() - item.started)
        except KeyboardInterrupt:
            for ref, item in pending.items():
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
                record_failure(client, item.job.run_id, "interrupted")
            raise

    def _verdict(self, client: MlflowClient, job: ChildJob, ref: Any) -> tuple[bool, str]:
        """The child's run decides; a task that died before the run said why (its worker killed, its node
        lost) is recorded FAILED with what Ray reports, in one line."""
        from ray.exceptions import RayTaskError

        died = ""
        try:
            self.ray.get(ref)
        except RayTaskError as exc:  # raised in the task, outside execute_child (e.g. the store unreachable)
            died = one_line_error(exc.cause if exc.cause is not None else exc)
        except Exception as exc:  # WorkerCrashedError, NodeDiedError, OutOfMemoryError, TaskCancelledError
            died = f"{type(exc).__name__}: the child's process died while it ran (killed, out of memory " \
                   "or its node lost)"
        run = client.get_run(job.run_id)
        if is_done(run):
            return True, ""
        error = run.data.tags.get("ifadit.sweep.error", "")
        if run.info.status == "RUNNING" or not error:
            error = died or "the child's task ended without a verdict in its run"
            log = Path(job.work_dir) / CHILD_LOG  # on a shared file system: what it printed before it died
            if log.exists():
                with contextlib.suppress(Exception):
                    client.log_artifact(job.run_id, str(log), "logs")
            record_failure(client, job.run_id, error)
        return False, error
