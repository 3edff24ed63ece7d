"""``ifadit sweep`` on Ray: a real two-node Ray cluster on this machine (``ray start --head`` and a second
``ray start --address``, one CPU each) with a real ``mlflow server``, the tiny 2×2 sweep sent to it with
``--ray_address``; a child whose worker process is killed mid-fit; the same 2×2 sweep with ``--jobs 2`` on a
local Ray runtime; and the one-line refusals (no Ray, a sqlite store for a cluster, a child no node can hold).

Every process started here (the two Ray nodes, the MLflow server) runs in its own process group and is stopped
by that group's id at the end, even when a test fails. Ray's token authentication is on, with a token of this
module's own (in the environment, so nothing is written to ``~/.ray``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Callback
from mlflow.tracking import MlflowClient
from test_sweep import CONF, SPEC, MlflowServer, _check_sweep, _spec_data, _sweep_runs

from ifadit import cli
from ifadit.sweep import SweepOptions, load_spec
from ifadit.sweep.child import TAG_ERROR, TAG_STATE, TAG_SUPERSEDED
from ifadit.sweep.engine import TAG_ENGINE, TAG_HOST, TAG_NODE
from ifadit.sweep.prerequisites import run_prerequisites
from ifadit.sweep.spec import expand_dotted

TESTS = Path(__file__).resolve().parent
NODE_ID = re.compile(r"^[0-9a-f]{56}$")
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module", autouse=True)
def _ray_env():
    """The sweep's Ray driver joins the test cluster with its token; a local runtime uses the same one. Set
    before this module first imports Ray, which reads its settings then."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in RAY_ENV.items():
            patch.setenv(key, value)
        yield


class HoldWhileFileExists(Callback):
    """Holds the fit at its first batch while ``path`` exists, after writing the process id to
    ``path.pid``: a child a test can kill mid-fit, and that a re-run (the file gone) trains through. The same
    recipe both times, so the same child hash."""

    def __init__(self, path: str, timeout: float = 120.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def on_train_batch_start(self, *args: object) -> None:
        if not self.path.exists():
            return
        self.path.with_suffix(".pid").write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RayNode:
    """``ray start --block`` in its own process group (raylet, GCS and workers are its members), its output
    in a log; ``stop`` ends the whole group by its id."""

    def __init__(self, args: list[str], log: Path) -> None:
        env = {**os.environ, **RAY_ENV, "OMP_NUM_THREADS": "1",
               # the workers import this module (the hold callback) by name
               "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
        self.log = log
        ray = Path(sys.executable).with_name("ray")
        with open(log, "w") as out:
            self.proc = subprocess.Popen([str(ray), "start", "--block", "--disable-usage-stats",
                                          "--num-cpus=1", f"--dashboard-agent-listen-port={_free_port()}",
                                          *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def wait_started(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"ray node not up in {timeout} s"
            time.sleep(0.2)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is left
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = MlflowServer(tmp_path_factory.mktemp("ray_mlflow_server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, server: MlflowServer) -> Path:
    """The sweeps' folder, with the tiny spec's prerequisites (recognizer, phase 1) trained once, in this
    process (a parallel sweep would start a fresh Python for each), with the data root the sweeps set."""
    work = tmp_path_factory.mktemp("ray_sweep_work")
    options = SweepOptions(extra=expand_dotted({"data.root": str(work / "synthfaces")}), log=lambda _: None)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        run_prerequisites(load_spec(SPEC), options, server.wait_ready(), True, work)
    return work


@pytest.fixture(scope="module")
def cluster(_ray_env: None, server: MlflowServer):
    """Two Ray nodes on this machine, one CPU each; yields the head's address. (Ray announces its nodes at
    this host's own address even when asked for 127.0.0.1 and does not reach beyond it.)"""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    port = _free_port()
    nodes = [RayNode(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                      f"--temp-dir={temp}"], Path(temp + ".head.log"))]
    try:
        nodes[0].wait_started()
        nodes.append(RayNode([f"--address=127.0.0.1:{port}"], Path(temp + ".worker.log")))
        nodes[1].wait_started()
        yield f"127.0.0.1:{port}"
    finally:
        for node in reversed(nodes):
            node.stop()
        for node in nodes:
            assert node.proc.returncode is not None
        shutil.rmtree(temp, ignore_errors=True)
        for suffix in (".head.log", ".worker.log"):
            Path(temp + suffix).unlink(missing_ok=True)


def _args(work: Path, name: str, *more: str, spec: Path = SPEC) -> list[str]:
    return ["sweep", str(spec), "--name", name, "--set", f"data.root={work / 'synthfaces'}",
            "--results_dir", str(work / "results" / name), "--work_dir", str(work / "sweeps" / name), *more]


def test_a_sweep_on_a_two_node_ray_cluster_logs_to_a_shared_mlflow_server(
    work: Path, server: MlflowServer, cluster: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    uri = server.wait_ready()
    monkeypatch.chdir(work)
    args = _args(work, "tiny", "--ray_address", cluster, "--tracking_uri", uri, "--cpus_per_child", "1")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "queued as a Ray task" in out and "4/4 children finished, 0 failed" in out
    client = MlflowClient(uri)
    _check_sweep(client, "tiny", work / "results" / "tiny", work / "dl")
    parent, children = _sweep_runs(client, "tiny")
    engine = parent.data.tags[TAG_ENGINE]
    assert engine.startswith("ray ") and f"cluster at {cluster}: 2 node(s), 2 CPUs" in engine
    nodes = {c.data.tags[TAG_NODE] for c in children}
    assert len(nodes) == 2 and all(NODE_ID.match(n) for n in nodes)  # one CPU a node: both took children
    assert {c.data.tags[TAG_HOST] for c in children} == {socket.gethostname()}
    for child in children:  # each child's output is its run's artifact, sent through the server
        assert [a.path for a in client.list_artifacts(child.info.run_id, "logs")] == ["logs/child.log"]
    summary = (work / "results" / "tiny" / "summary.md").read_text()
    assert f"Engine: {engine}." in summary and "## Children" in summary
    for child in children:
        assert f"| `{child.info.run_id}` | done | `{child.data.tags[TAG_NODE]}` |" in summary


def test_a_child_killed_mid_fit_fails_alone_and_a_rerun_retries_only_it(
    work: Path, server: MlflowServer, cluster: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """The ``held`` child waits in its first training batch; its Ray worker is killed by PID there. It is
    recorded FAILED with one line while ``allinone`` finishes; a re-run skips ``allinone`` and trains ``held``
    again in a new run (Ray itself never retries it: max_retries=0)."""
    uri = server.wait_ready()
    monkeypatch.chdir(work)
    hold = work / "hold"
    hold.touch()
    held = {"trainer.callbacks": [{"class_path": "test_sweep_ray.HoldWhileFileExists",
                                   "init_args": {"path": str(hold)}}]}
    data = _spec_data(name="tiny-kill", grid={"flow": {"allinone": {}, "held": held}})
    data["base"] = str(CONF / "flow.yaml")
    for item in data["prerequisites"]:
        item["config"] = str(CONF / item["config"])
    data["scoring"] = {"stage": "test"}  # no judge: scoring is not what this test is about
    spec = work / "kill.yaml"
    spec.write_text(yaml.safe_dump(data))
    args = _args(work, "tiny-kill", "--ray_address", cluster, "--tracking_uri", uri, spec=spec)

    codes: list[int] = []
    sweep = threading.Thread(target=lambda: codes.append(cli.main(args)))
    sweep.start()
    try:
        pid_file = hold.with_suffix(".pid")
        deadline = time.monotonic() + 120
        while not pid_file.exists():
            assert sweep.is_alive() and time.monotonic() < deadline, "the held child never started its fit"
            time.sleep(0.1)
        time.sleep(0.2)  # the pid is written before the hold loop starts
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    finally:
        sweep.join(timeout=180)
        hold.unlink(missing_ok=True)
    assert codes == [1]
    out = capsys.readouterr().out
    assert "1/2 children finished, 1 failed" in out
    client = MlflowClient(uri)
    _, children = _sweep_runs(client, "tiny-kill")
    by_label = {c.data.tags["ifadit.sweep.label"]: c for c in children}
    assert by_label["allinone"].info.status == "FINISHED"
    killed = by_label["held"]
    assert killed.info.status == "FAILED" and killed.data.tags[TAG_STATE] == "failed"
    error = killed.data.tags[TAG_ERROR]
    assert error.startswith("WorkerCrashedError: the child's process died") and "\n" not in error
    assert NODE_ID.match(killed.data.tags[TAG_NODE])

    assert cli.main(args) == 0  # the hold file is gone: the retried child trains through
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 1 and out.count("queued as a Ray task") == 1
    _, children = _sweep_runs(client, "tiny-kill")
    assert len(children) == 3
    retried = next(c for c in children if c.info.run_id not in
                   {killed.info.run_id, by_label["allinone"].info.run_id})
    assert retried.info.status == "FINISHED" and retried.data.tags["ifadit.sweep.label"] == "held"
    assert client.get_run(killed.info.run_id).data.tags[TAG_SUPERSEDED] == retried.info.run_id
    summary = (work / "results" / "tiny-kill" / "summary.md").read_text()
    assert "| held | 1 |" in summary and "| allinone | 1 |" in summary


def test_a_child_no_node_can_hold_is_refused_before_any_run(
    work: Path, server: MlflowServer, cluster: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    uri = server.wait_ready()
    monkeypatch.chdir(work)
    args = _args(work, "tiny-gpu", "--ray_address", cluster, "--tracking_uri", uri, "--gpus_per_child", "1")
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ifadit sweep: error: no Ray node can hold a child of 1 CPUs and 1 GPUs")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ifadit-sweeps-test")
    assert not client.search_runs([experiment.experiment_id], "tags.`ifadit.sweep.name` = 'tiny-gpu'")
    assert not pytest.importorskip("ray").is_initialized()  # the refused sweep left the cluster


def test_jobs_2_runs_the_sweep_on_a_local_ray_runtime(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.chdir(work)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    uri = f"sqlite:///{work / 'outputs' / 'mlflow.db'}"  # a local runtime shares this machine's files
    assert cli.main(_args(work, "tiny-local", "--jobs", "2", "--tracking_uri", uri)) == 0
    assert "4/4 children finished, 0 failed" in capsys.readouterr().out
    client = MlflowClient(uri)
    _check_sweep(client, "tiny-local", work / "results" / "tiny-local", work / "dl-local")
    parent, children = _sweep_runs(client, "tiny-local")
    assert "local runtime: 1 node(s), 2 CPUs" in parent.data.tags[TAG_ENGINE]  # room for 2 children of 1 CPU
    assert len({c.data.tags[TAG_NODE] for c in children}) == 1
    assert not ray.is_initialized()  # the runtime the sweep started is gone with it


def test_ray_is_asked_for_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Without Ray, ``--jobs 2`` says how to get it; with ``--ray_address``, a sqlite store is refused
    (other nodes cannot write it) — both before any run is made."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert cli.main(["sweep", str(SPEC), "--jobs", "2", "--tracking_uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ifadit sweep: error: --jobs 2 runs the children as Ray tasks and Ray is not installed: "
                   "pip install 'ifadit[ray]'")
    assert cli.main(["sweep", str(SPEC), "--ray_address", "127.0.0.1:6379", "--tracking_uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ifadit sweep: error: --ray-address: the tracking URI sqlite:///")
    assert "\n" not in err
    assert not (tmp_path / "mlflow.db").exists()
