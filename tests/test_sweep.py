"""``ifadit sweep``: specs and overrides, the dry run, and real sweeps at toy size — a 2×2 grid of tiny
phase-2 fits from one shared phase-1 checkpoint, each a child MLflow run under a parent run, scored and
summarized — against a sqlite store and against a real ``mlflow server`` on 127.0.0.1 that this module starts
and stops; a sweep with failing children. Parallel sweeps (children as Ray tasks, locally and on a two-node
Ray cluster) are in test_sweep_ray.py.

The server is started by the first sweep test so its ~12 s boot overlaps that sweep; the prerequisites
(recognizer, phase 1) are trained once by the first sweep and found by the others (one working folder).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from ifadit import cli
from ifadit.sweep import (
    ChildJob,
    SweepSpecError,
    apply_overrides,
    check_child_config,
    load_spec,
    metric_family,
    parse_spec,
    plan,
    score_checkpoint,
)
from ifadit.sweep.child import TAG_ERROR, TAG_HASH, TAG_PARENT, TAG_ROLE, TAG_STATE, TAG_SUPERSEDED
from ifadit.sweep.summary import Stat, aggregate, format_stat

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "tests" / "conf"
SPEC = CONF / "sweeps" / "tiny.yaml"
EXPERIMENT = "ifadit-sweeps-test"  # the tiny spec's
GRID = {("allinone", "mapping"), ("allinone", "bits"), ("realnvp", "mapping"), ("realnvp", "bits")}
FLOW_CLASSES = {"allinone": "ifadit.flows.allinone.AllInOneFlow",
                "realnvp": "ifadit.flows.realnvp.RealNVPFlow"}
KEY_CLASSES = {"mapping": "ifadit.keys.schemes.MappingKeyScheme", "bits": "ifadit.keys.schemes.BitsKeyScheme"}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test writes relative to the current folder lands in its own folder."""
    monkeypatch.chdir(tmp_path)


# -- spec and overrides (no training) ------------------------------------------------------------------------


def test_overrides_switch_components_keeping_the_arguments_the_new_class_takes() -> None:
    base = yaml.safe_load((CONF / "flow.yaml").read_text())
    base["model"]["flow"]["init_args"]["global_affine_init"] = 0.5  # allinone only
    out = apply_overrides(base, {
        "model.flow": "realnvp",
        "model.key_scheme": {"class_path": "bits"},
        "model.compensator": None,
        "model.losses.anonymity": 0,
        "model": {"losses": {"image": 0.5}},
        "trainer.max_steps": 7,
    })
    assert out["model"]["flow"] == {"class_path": "realnvp", "init_args": {"dim": 64, "cond_dim": 64,
                                                                           "num_blocks": 2}}
    # mapping's num_layers is not an argument of bits: dropped
    assert out["model"]["key_scheme"] == {"class_path": "bits", "init_args": {"dim": 64}}
    assert out["model"]["compensator"] is None
    assert out["model"]["losses"] == {"anonymity": 0, "image": 0.5}
    assert out["trainer"]["max_steps"] == 7 and out["trainer"]["limit_val_batches"] == 1  # merged
    assert base["model"]["flow"]["class_path"] == "allinone"  # the input is not modified
    same = apply_overrides(base, {"model.flow.init_args.num_blocks": 3,
                                  "model.flow.class_path": "allinone"})
    assert same["model"]["flow"]["init_args"] == {**base["model"]["flow"]["init_args"], "num_blocks": 3}
    assert check_child_config(out) is None  # the switched recipe is a valid one


def _spec_data(**changes) -> dict:
    data = yaml.safe_load(SPEC.read_text())
    data.update(changes)
    return data


def test_grid_variants_and_seeds_give_one_hashed_child_each() -> None:
    spec = parse_spec(_spec_data(variants={"no-privacy": {"model.losses.anonymity": 0}}, seeds=[0, 1]),
                      SPEC)
    combos = spec.combinations()
    assert [c.run_name for c in combos[:2]] == ["allinone/mapping s0", "allinone/mapping s1"]
    assert len(combos) == (4 + 1) * 2 and len({c.hash for c in combos}) == 10
    assert {(c.choices["flow"], c.choices["key_scheme"]) for c in combos if "flow" in c.choices} == GRID
    variant = [c for c in combos if c.label == "no-privacy"]
    assert [c.config["seed_everything"] for c in variant] == [0, 1]
    assert all(c.config["model"]["losses"]["anonymity"] == 0 for c in variant)
    assert all(c.config["trainer"]["max_steps"] == 1 for c in combos)  # the spec's overrides reach all
    assert [c.hash for c in parse_spec(_spec_data(), SPEC).combinations()] == \
        [c.hash for c in parse_spec(_spec_data(), SPEC).combinations()]  # stable
    moved = parse_spec(_spec_data(), SPEC).combinations({"data": {"root": "elsewhere"}})
    assert not {c.hash for c in moved} & {c.hash for c in combos}  # anything that shapes a child renames it
    judged_apart = parse_spec(_spec_data(scoring={"stage": "test"}), SPEC).combinations()
    assert not {c.hash for c in judged_apart} & {c.hash for c in combos}  # so does how it is scored


@pytest.mark.parametrize(("changes", "message"), [
    ({"grdi": {}}, "unknown key(s) ['grdi']"),
    ({"base": "no/such/recipe.yaml"}, "cannot read base recipe no/such/recipe.yaml"),
    ({"seeds": [0, 0]}, "seeds repeat"),
    ({"grid": {"flow": ["a"], "other": ["a"]}, "variants": {"a/a": {}}}, "share the label(s) ['a/a']"),
    ({"scoring": {"stage": "train"}}, "scoring.stage must be one of"),
    ({"name": "../escape"}, "name must be letters"),
    ({"variants": {"same": {"model.flow": "realnvp", "model.key_scheme": "bits"}}},
     "'realnvp/bits' and 'same' give the same recipe"),
    ({"scoring": {"judge": {"config": "../recognizer.yaml", "ckpt": "j.ckpt"}}},
     'write recognizer: CKPT:config=RECIPE instead (here recognizer: "j.ckpt:config=../recognizer.yaml")'),
    ({"scoring": {"judge": {"recognizer": "no-such-judge"}}}, "no recognizer named 'no-such-judge'"),
    ({"scoring": {"judge": {"recognizer": "j.ckpt"}}}, "needs the recipe it was trained with"),
    ({"scoring": {"judge": {"recognizer": "synthfaces64-judge", "max_batches": 0}}},
     "scoring.judge.max_batches must be a positive integer"),
])
def test_bad_specs_fail_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, changes: dict, message: str
) -> None:
    data = _spec_data(**changes)
    data["base"] = data["base"] if "base" in changes else str(CONF / "flow.yaml")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SweepSpecError):
        load_spec(path).combinations()
    assert cli.main(["sweep", str(path), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ifadit sweep: error: ") and message in err and "\n" not in err


def test_the_judge_is_a_recognizer_spec_built_once_per_spec_and_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ifadit.recognizers import spec as recognizer_spec
    from ifadit.sweep import child
    from ifadit.sweep.spec import Judge

    judge = parse_spec(_spec_data(), SPEC).judge
    # the recipe after config= is looked up beside the spec file, as recipe paths are
    ckpt, _, recipe = judge.recognizer.partition(":config=")
    assert ckpt == "outputs/checkpoints/ifadit/conf-recognizer/last.ckpt" and Path(recipe).resolve() == \
        (CONF / "recognizer.yaml").resolve()
    assert judge.checkpoint == Path(ckpt) and (judge.split, judge.max_batches) == ("test", 1)
    shipped = parse_spec(_spec_data(scoring={"judge": {"recognizer": "synthfaces64-judge"}}), SPEC).judge
    assert shipped == Judge("synthfaces64-judge") and shipped.checkpoint is None
    # a different judge is a different child
    hashes = {c.hash for c in parse_spec(_spec_data(), SPEC).combinations()}
    assert not hashes & {c.hash for c in parse_spec(_spec_data(scoring={"judge": {
        "recognizer": "synthfaces64-judge"}}), SPEC).combinations()}

    built: list[str] = []

    def build(spec: str) -> torch.nn.Module:
        built.append(spec)
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(recognizer_spec, "build_recognizer", build)
    monkeypatch.setattr(child, "_JUDGES", {})
    path = tmp_path / "judge.ckpt"
    path.write_bytes(b"0")
    mine = Judge(f"{path}:config={CONF / 'recognizer.yaml'}")
    first = child._load_judge(mine)
    assert child._load_judge(mine) is first and built == [mine.recognizer]  # kept for the next child
    os.utime(path, (1, 1))  # the checkpoint changed (a prerequisite retrained it): built again
    assert child._load_judge(mine) is not first and len(built) == 2
    assert child._load_judge(shipped) is child._load_judge(shipped) and built[-1] == "synthfaces64-judge"
    assert len(built) == 3


def test_dry_run_lists_every_child_and_flags_invalid_recipes(capsys: pytest.CaptureFixture) -> None:
    spec = parse_spec(_spec_data(variants={"typo": {"model.losses.anonimity": 0}}), SPEC)
    rows = plan(spec)
    assert [r.problem is None for r in rows] == [True] * 4 + [False]
    assert "anonimity" in rows[-1].problem and "\n" not in rows[-1].problem
    assert cli.main(["sweep", str(SPEC), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert all(f"{f}/{k}" in out for f, k in GRID) and out.count("[ok]") == 4


def test_the_benchmark_specs_parse_and_the_cpu_one_builds() -> None:
    """Every child of both benchmark specs parses; the CPU settings that change a component also build
    (init_from cleared; the others differ from ``paper`` in loss weights only, which the parse checks)."""
    cpu = load_spec(REPO / "benchmarks" / "ablations.yaml")
    assert cpu.judge is not None and cpu.judge.recognizer == "synthfaces64-judge"  # shipped: nothing to train
    assert [p.config.name for p in cpu.prerequisites] == ["disentangle.yaml"]  # the identity encoder ships
    rows = plan(cpu)
    assert len(rows) == 14 and all(r.problem is None for r in rows), [r.problem for r in rows if r.problem]
    for label in ("paper", "w/o compensator", "realnvp flow", "bits key scheme"):
        combo = next(c for c in cpu.combinations() if c.label == label)
        assert check_child_config(combo.config, instantiate=True) is None, label
    gpu = load_spec(REPO / "benchmarks" / "ffhq256-ablations.yaml")
    rows = plan(gpu)
    assert all(r.problem is None for r in rows), [r.problem for r in rows if r.problem]
    assert [r.combination.label for r in rows] == ["paper", "w/o privacy loss", "w/o diversity",
                                                   "w/o image loss", "w/o compensator", "single-phase"]
    single = rows[-1].combination.config["model"]
    assert single["phase"] == "joint" and single["init_from"] is None and single["train_generator"] is False


def test_summary_is_mean_and_sample_std_over_seeds() -> None:
    records = [{"setting": "a", "metrics": {"test/anon_id_cos": v}} for v in (0.1, 0.3)]
    records.append({"setting": "b", "metrics": {"test/anon_id_cos": 0.5}})
    table = aggregate(records)
    assert format_stat(table["a"]["test/anon_id_cos"]) == f"0.200 ± {math.sqrt(0.02):.3f}"
    assert format_stat(table["b"]["test/anon_id_cos"]) == "0.500"  # one seed: no spread to show
    assert format_stat(Stat([1e-7, 3e-7])) == "2.00e-07 ± 1.41e-07"
    families = {name: metric_family(name) for name in (
        "test/anon_id_cos", "test/recovered_psnr", "test/wrong_key_id_cos",
        "judge/judge_cos_between_two_keys", "test/recon_l1", "test/score")}
    assert families == {"test/anon_id_cos": "anonymity", "test/recovered_psnr": "reversibility",
                        "test/wrong_key_id_cos": "security", "judge/judge_cos_between_two_keys": "diversity",
                        "test/recon_l1": "quality", "test/score": "other"}
    assert metric_family("test/anon_id_cos", {"custom": "anon_id"}) == "custom"
    # the metrics suite's names carry their family: it wins over the patterns ("detection" is not anonymity)
    assert metric_family("test/utility/detection_rate") == "utility"
    assert metric_family("test/security/no_key/psnr") == "security"


def test_a_failed_prerequisite_stops_the_sweep_before_any_child(
    tmp_path: Path, work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = _sqlite(work)  # the module's store: a new sqlite store costs seconds of schema migrations
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = _spec_data(name="tiny-prerequisite", base=str(CONF / "flow.yaml"),
                      prerequisites=[{"config": str(CONF / "recognizer.yaml"), "creates": "missing.ckpt",
                                      "overrides": {"model.arcface_scael": 1}}])
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["sweep", str(path), "--results_dir", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # mlflow logs its new database above it
    assert err.startswith("ifadit sweep: error: prerequisite") and "arcface_scael" in err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "tags.`ifadit.sweep.name` = 'tiny-prerequisite'")
    assert [r.data.tags[TAG_ROLE] for r in runs] == ["parent"]  # no child was started
    assert runs[0].info.status == "FAILED" and "arcface_scael" in runs[0].data.tags["ifadit.sweep.error"]


# -- real sweeps ---------------------------------------------------------------------------------------------


class MlflowServer:
    """``mlflow server`` on a free loopback port with its own sqlite store and artifact folder."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = root / "artifacts"
        self.log = root / "server.log"
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                   "--artifacts-destination", str(self.artifacts), "--workers", "1"]
        with open(self.log, "w") as out:
            # its own process group: the server forks uvicorn and a job runner, stopped together by PID
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def wait_ready(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.uri
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server not up in {timeout} s"
            time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM to the server's process group; its workers can take many seconds to exit gracefully, so
        after 2 s the group is killed."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    yield server
    server.stop()
    assert server.proc.returncode is not None


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working folder for the sweeps here: the prerequisites' checkpoints and the SynthFaces cache."""
    return tmp_path_factory.mktemp("sweep_work")


def _sqlite(work: Path) -> str:
    return f"sqlite:///{work / 'outputs' / 'mlflow.db'}"


def _sweep_runs(client: MlflowClient, name: str) -> tuple[object, list]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.`ifadit.sweep.name` = '{name}'")
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "parent"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get(TAG_PARENT) == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], children


def _check_sweep(client: MlflowClient, name: str, results: Path, download: Path) -> dict[str, str]:
    """The 2×2 sweep in the store: 4 finished, scored children of one parent, and the summary artifacts.
    Returns the children's run ids by setting."""
    parent, children = _sweep_runs(client, name)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert {(c.data.params["sweep.flow"], c.data.params["sweep.key_scheme"]) for c in children} == GRID
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags[TAG_STATE] == "done"
        metrics = child.data.metrics
        # (a) the task's test stage, (b) the judge, and the fit itself (train/loss)
        for name_ in ("test/anon_id_cos", "test/recovered_id_cos", "test/wrong_key_id_cos",
                      "test/two_key_id_cos", "judge/judge_cos_original_anonymized", "train/loss"):
            assert math.isfinite(metrics[name_]), name_
        assert metrics["test/latent_roundtrip_error"] < 1e-5
        config = yaml.safe_load(Path(client.download_artifacts(
            child.info.run_id, "config.yaml", str(download / child.info.run_id))).read_text())
        flow = child.data.params["sweep.flow"]
        assert config["model"]["flow"]["class_path"] == FLOW_CLASSES[flow]  # the override was trained
        assert config["model"]["flow"]["init_args"]["dim"] == 64
        key_scheme = child.data.params["sweep.key_scheme"]
        assert config["model"]["key_scheme"]["class_path"] == KEY_CLASSES[key_scheme]
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    expected = {f"summary/{f}" for f in ("summary.md", "summary.json", "anonymity.png",
                                         "reversibility.png", "security.png", "diversity.png")}
    assert expected <= names
    md = Path(client.download_artifacts(parent.info.run_id, "summary/summary.md", str(download / "parent")))
    assert md.read_text() == (results / "summary.md").read_text()
    text = md.read_text()
    for flow, key in GRID:
        assert f"| {flow}/{key} | 1 |" in text
    summary = json.loads((results / "summary.json").read_text())
    by_run = {c["run_id"]: c for c in summary["children"]}
    for child in children:  # the table is made of what MLflow holds
        recorded = by_run[child.info.run_id]["metrics"]
        assert recorded["test/anon_id_cos"] == child.data.metrics["test/anon_id_cos"]
    with Image.open(results / "anonymity.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    return {f"{c.data.params['sweep.flow']}/{c.data.params['sweep.key_scheme']}": c.info.run_id
            for c in children}


def test_sweep_against_sqlite_then_rerun_skips_finished_children(
    work: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _sqlite(work))
    results = work / "results" / "tiny"
    args = ["sweep", str(SPEC), "--set", f"data.root={work / 'synthfaces'}",
            "--results_dir", str(results), "--work_dir", str(work / "sweeps" / "sqlite")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "training (creates outputs/checkpoints/ifadit/conf-disentangle/last.ckpt)" in out
    client = MlflowClient(_sqlite(work))
    ids = _check_sweep(client, "tiny", results, work / "dl")
    # only the last checkpoint of each child is kept (keep_checkpoints: last)
    kept = sorted(p.name for p in (work / "sweeps" / "sqlite").rglob("*.ckpt"))
    assert kept == ["last.ckpt"] * 4

    # the standalone scorer on the saved checkpoint reproduces what the sweep logged from the fit's trainer
    run_id = ids["realnvp/bits"]
    combos = parse_spec(_spec_data(), SPEC).combinations({"data": {"root": str(work / "synthfaces")}})
    combo = next(c for c in combos if c.hash == client.get_run(run_id).data.tags[TAG_HASH])
    folder = work / "sweeps" / "sqlite" / combo.slug
    rescored = score_checkpoint(ChildJob(run_id, _sqlite(work), EXPERIMENT, combo.config, str(folder)),
                                folder / "checkpoints" / "last.ckpt")
    history = client.get_metric_history(run_id, "test/recovered_id_cos")
    assert len(history) == 2
    assert rescored["test/recovered_id_cos"] == pytest.approx(history[0].value, abs=1e-5)

    assert cli.main(args) == 0  # the same sweep again: nothing to train
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 4 and "training (run" not in out
    assert "exists, not retrained" in out
    parent, children = _sweep_runs(client, "tiny")
    assert {c.info.run_id for c in children} == set(ids.values()) and parent.info.status == "FINISHED"


def _assert_failed(client: MlflowClient, run, needle: str, work: Path) -> None:
    """FAILED, with the error as one line in the tag and the traceback as the ``error.txt`` artifact."""
    assert run.info.status == "FAILED" and run.data.tags[TAG_STATE] == "failed"
    error = run.data.tags[TAG_ERROR]
    assert needle in error and "\n" not in error and len(error) <= 500
    local = client.download_artifacts(run.info.run_id, "error.txt", str(work / "dl" / run.info.run_id))
    assert "Traceback" in Path(local).read_text()


def test_a_failed_child_is_recorded_and_the_others_finish(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A child that fails while building (a flow with a negative clamp) ends FAILED with its one-line
    error while the other finishes; exit status 1. Then, with a variant added whose recipe does not parse (a
    typo in a loss name): the finished child is skipped, the failed one is tried again in a new run, the new
    one fails at parse, and the summary lists both."""
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _sqlite(work))
    data = _spec_data(name="tiny-failure",
                      grid={"flow": {"broken": {"model.flow.init_args.clamp": -1.0}, "allinone": {}}})
    data["base"] = str(CONF / "flow.yaml")
    for item in data["prerequisites"]:
        item["config"] = str((SPEC.parent / item["config"]).resolve())
    data["scoring"] = {"stage": "test"}
    path = work / "failure.yaml"
    path.write_text(yaml.safe_dump(data))
    args = ["sweep", str(path), "--set", f"data.root={work / 'synthfaces'}",
            "--results_dir", str(work / "results" / "failure"),
            "--work_dir", str(work / "sweeps" / "failure")]
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "1/2 children finished, 1 failed" in out
    client = MlflowClient(_sqlite(work))
    _, children = _sweep_runs(client, "tiny-failure")
    by_label = {c.data.tags["ifadit.sweep.label"]: c for c in children}
    done = by_label["allinone"]
    assert done.info.status == "FINISHED" and "test/anon_id_cos" in done.data.metrics
    _assert_failed(client, by_label["broken"], "clamp must be > 0", work)

    data["variants"] = {"typo": {"model.losses.anonimity": 0}}
    path.write_text(yaml.safe_dump(data))
    client.update_run(by_label["broken"].info.run_id, status="RUNNING")  # as if its sweep had been killed
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 1 and out.count("FAILED after") == 2
    assert "1/3 children finished, 2 failed" in out
    _, children = _sweep_runs(client, "tiny-failure")
    assert len(children) == 4
    first_broken = by_label["broken"]
    by_label = {c.data.tags["ifadit.sweep.label"]: c for c in children
                if c.info.run_id != first_broken.info.run_id}
    retried = by_label["broken"]
    first_broken = client.get_run(first_broken.info.run_id)
    assert first_broken.data.tags[TAG_SUPERSEDED] == retried.info.run_id
    assert first_broken.info.status == "KILLED"  # a run left RUNNING by a dead sweep is closed when retried
    assert first_broken.data.tags[TAG_ERROR].startswith("interrupted")
    _assert_failed(client, retried, "clamp must be > 0", work)
    _assert_failed(client, by_label["typo"], "anonimity", work)
    summary = (work / "results" / "failure" / "summary.md").read_text()
    assert "## Failed children" in summary and "clamp must be > 0" in summary and "anonimity" in summary
    assert "| allinone | 1 |" in summary


def test_sweep_against_a_real_mlflow_server(
    work: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = mlflow_server.wait_ready()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    results = work / "results" / "server"
    args = ["sweep", str(SPEC), "--set", f"data.root={work / 'synthfaces'}",
            "--results_dir", str(results), "--work_dir", str(work / "sweeps" / "server")]
    assert cli.main(args) == 0
    client = MlflowClient(uri)
    ids = _check_sweep(client, "tiny", results, work / "dl-server")
    for run_id in ids.values():
        assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    # the artifacts went through the server into its artifact folder, not to a local path of the client
    stored = {p.name for p in mlflow_server.artifacts.rglob("*") if p.is_file()}
    assert {"summary.md", "anonymity.png", "config.yaml", "grid.png"} <= stored
    assert not (work / "mlruns").exists()
