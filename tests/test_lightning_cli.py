"""``ifadit fit|validate|...``: every phase trains on the CPU (chained through
``init_from``), MLflow receives params, metrics, the config and sample grids, no key material reaches any
output, a SIGKILLed run resumes from ``--ckpt_path last``, and ``strategy: ddp`` runs as two CPU processes.

The expensive part, one short fit per phase against a real sqlite store, runs once per module
(``chain``); the tests after it read what it left behind.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from ifadit import cli
from ifadit.keys import SecretKey
from ifadit.lightning_cli import cli_main
from ifadit.task import IFADITTask

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "tests" / "conf"
# Chained fits: phase -> the phase whose last checkpoint it starts from.
CHAIN = {"recognizer": None, "disentangle": "recognizer", "flow": "disentangle", "compensator": "flow"}
TRAIN_STEPS = 2  # trainer.max_steps in tests/conf


def _run_checkpoint_dir(work: Path, phase: str) -> Path:
    """Where a tests/conf run checkpoints: outputs/checkpoints/<experiment>/<config folder>-<stem>."""
    return work / "outputs" / "checkpoints" / "ifadit" / f"conf-{phase}"


def _sqlite_uri(work: Path) -> str:
    return f"sqlite:///{work / 'outputs' / 'mlflow.db'}"


def _subprocess_env(work: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": _sqlite_uri(work), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a run writes relative to the CWD (outputs/, mlruns/) lands in the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SynthFaces cache for every fit here (rendered by the first)."""
    return str(tmp_path_factory.mktemp("synthfaces"))


# -- arguments ------------------------------------------------------------------------------------------


# -- the phases, chained through init_from, against a real MLflow store ------------------------------------


@dataclass
class ChainRun:
    work: Path
    key_file: Path
    secret: bytes


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, synth_root: str) -> ChainRun:
    """``ifadit keygen``, then recognizer -> disentangle -> flow -> compensator fits and a joint
    fast_dev_run, each starting from the previous phase's last checkpoint, then ``ifadit demo`` with the
    user's key."""
    work = tmp_path_factory.mktemp("chain")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", _sqlite_uri(work))
        assert cli.main(["keygen", "user.key"]) == 0
        for phase, previous in CHAIN.items():
            args = ["fit", "--config", str(CONF / f"{phase}.yaml"), "--data.root", synth_root]
            if previous:
                args += ["--model.init_from", str(_run_checkpoint_dir(work, previous) / "last.ckpt")]
            if phase == "flow":
                args += ["--model.losses.image", "0.3"]  # a config value must reach the MLflow params
            assert cli.main(args) == 0
        joint = ["fit", "--config", str(CONF / "joint.yaml"), "--data.root", synth_root,
                 "--trainer.fast_dev_run", "true",
                 "--model.init_from", str(_run_checkpoint_dir(work, "recognizer") / "last.ckpt")]
        assert cli.main(joint) == 0
        demo = ["demo", "--config", str(REPO / "recipes/quickstart/flow_demo.yaml"), "--key", "user.key",
                "--steps", "1", "--out", "outputs/demo"]
        assert cli.main(demo) == 0
    key_file = work / "user.key"
    secret_line = next(line for line in key_file.read_text().splitlines() if line.startswith("secret:"))
    secret = base64.b64decode(secret_line.split(":", 1)[1].strip())
    assert SecretKey.load(key_file).fingerprint  # the file is a real key file
    return ChainRun(work, key_file, secret)


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_each_phase_checkpoints_into_its_run_folder(chain: ChainRun) -> None:
    for phase in CHAIN:
        folder = _run_checkpoint_dir(chain.work, phase)
        last = _checkpoint(folder / "last.ckpt")
        assert last["global_step"] == TRAIN_STEPS
        assert last["ifadit_phase"] == phase
        assert list(folder.glob("best-*.ckpt")), f"no best-by-val/score checkpoint in {folder}"


def _fresh_state(phase: str) -> dict[str, torch.Tensor]:
    """The weights a run of tests/conf/<phase>.yaml starts from without init_from (same seed)."""
    args = ["--config", str(CONF / f"{phase}.yaml"), "--model.init_from", "null", "--trainer.logger", "false"]
    return cli_main(args, run=False).model.state_dict()


def _assert_loaded_and_kept(trained: dict, resumed: dict, fresh: dict, keys: list[str]) -> None:
    """``resumed`` holds ``trained``'s values for ``keys`` (bit for bit: frozen, and in eval mode so batch
    norms do not drift), and they are not simply what a fresh start gives."""
    assert keys
    for key in keys:
        torch.testing.assert_close(resumed[key], trained[key], rtol=0, atol=0, msg=f"{key} changed")
    assert any(not torch.equal(fresh[key], trained[key]) for key in keys)


def test_init_from_loads_the_previous_phase_and_frozen_parts_stay_put(chain: ChainRun) -> None:
    recognizer = _checkpoint(_run_checkpoint_dir(chain.work, "recognizer") / "last.ckpt")["state_dict"]
    disentangle = _checkpoint(_run_checkpoint_dir(chain.work, "disentangle") / "last.ckpt")["state_dict"]
    flow = _checkpoint(_run_checkpoint_dir(chain.work, "flow") / "last.ckpt")["state_dict"]
    # recognizer -> disentangle: the identity encoder, under its phase-1 name
    as_phase1 = {"model.identity_encoder." + k.removeprefix("recognizer."): v
                 for k, v in recognizer.items() if k.startswith("recognizer.")}
    _assert_loaded_and_kept(as_phase1, disentangle, _fresh_state("disentangle"), sorted(as_phase1))
    # disentangle -> flow: everything phase 2 keeps frozen
    frozen = [k for k in disentangle if k.startswith(("model.identity_encoder.", "model.attribute_encoder.",
                                                      "model.mapper.", "model.generator."))]
    _assert_loaded_and_kept(disentangle, flow, _fresh_state("flow"), frozen)
    # flow -> compensator: everything but the compensator, which trains
    compensator = _checkpoint(_run_checkpoint_dir(chain.work, "compensator") / "last.ckpt")["state_dict"]
    kept = [k for k in flow if not k.startswith("model.compensator.")]
    _assert_loaded_and_kept(flow, compensator, _fresh_state("compensator"), kept)
    trained = [k for k in flow if k.startswith("model.compensator.")]
    assert trained and any(not torch.equal(flow[k], compensator[k]) for k in trained)


def test_a_flow_fitted_to_identities_is_fitted_when_phase_2_starts_and_kept_by_the_next_phase(
    chain: ChainRun, synth_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``whitened-rotation`` in the chain's flow and compensator phases: the flow phase fits it to the
    identity encoder's vectors of the training faces before its first step; the compensator phase takes
    the fitted flow from that checkpoint and does not fit it again."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _sqlite_uri(tmp_path))
    whitened = ["--model.flow", "whitened-rotation", "--model.flow.dim", "64", "--model.flow.cond_dim", "64",
                "--model.flow.num_blocks", "1", "--model.flow.rank", "8", "--data.root", synth_root]
    disentangle = _run_checkpoint_dir(chain.work, "disentangle") / "last.ckpt"
    assert cli.main(["fit", "--config", str(CONF / "flow.yaml"), *whitened,
                     "--model.init_from", str(disentangle)]) == 0
    flow_checkpoint = _run_checkpoint_dir(tmp_path, "flow") / "last.ckpt"
    assert cli.main(["fit", "--config", str(CONF / "compensator.yaml"), *whitened,
                     "--model.init_from", str(flow_checkpoint)]) == 0
    fitted = {k.removeprefix("model.flow."): v for k, v in _checkpoint(flow_checkpoint)["state_dict"].items()
              if k.startswith("model.flow.")}
    assert bool(fitted["fitted"]) and torch.all(fitted["scale"][:-1] >= fitted["scale"][1:])
    # the mean it fitted is the mean identity of the training faces
    task = cli_main(["--config", str(CONF / "flow.yaml"), *whitened, "--model.init_from", str(disentangle),
                     "--trainer.logger", "false"], run=False)
    task.datamodule.setup("fit")
    with torch.no_grad():
        encoder = task.model.model.identity_encoder.eval()
        identities = torch.cat([encoder(b["image"]) for b in task.datamodule.train_dataloader()])
    torch.testing.assert_close(fitted["mean"], identities.mean(dim=0), atol=1e-5, rtol=0)
    kept = _checkpoint(_run_checkpoint_dir(tmp_path, "compensator") / "last.ckpt")["state_dict"]
    for name, value in fitted.items():
        assert torch.equal(kept["model.flow." + name], value), f"the compensator phase changed flow.{name}"


def test_validate_reads_a_checkpoint(
    chain: ChainRun, synth_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(chain.work)
    checkpoint = _run_checkpoint_dir(chain.work, "flow") / "last.ckpt"
    validated = cli_main(["validate", "--config", str(CONF / "flow.yaml"), "--data.root", synth_root,
                          "--ckpt_path", str(checkpoint), "--trainer.logger", "false"])
    metrics = validated.trainer.callback_metrics
    assert {"val/score", "val/recovered_id_cos", "val/anon_id_cos"} <= set(metrics)
    # the shared metrics suite, judged by the model's own encoder, agrees with the task's own number
    suite = {k for k in metrics if k.startswith("val/suite/")}
    assert {"val/suite/anonymity/own/cos", "val/suite/security/wrong_key/own/cos"} <= suite
    torch.testing.assert_close(metrics["val/suite/anonymity/own/cos"], metrics["val/anon_id_cos"])
    assert all(torch.isfinite(value) for value in metrics.values())


def test_score_judges_a_flow_checkpoint_with_another_recognizer(chain: ChainRun, capsys) -> None:
    """``ifadit score``: the user's key anonymizes and recovers the test split; written to the outputs
    searched for key material below."""
    out = chain.work / "outputs" / "score"
    args = [
        "score", "--config", str(CONF / "flow.yaml"),
        "--ckpt_path", str(_run_checkpoint_dir(chain.work, "flow") / "last.ckpt"),
        "--judge", f"{_run_checkpoint_dir(chain.work, 'recognizer')}/last.ckpt:config={CONF}/recognizer.yaml",
        "--key", str(chain.key_file), "--out", str(out), "--split", "val",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(chain.work)
        assert cli.main(args) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["key_fingerprint"] == SecretKey.load(chain.key_file).fingerprint
    assert scores["images"] > 0 and scores["latent_roundtrip_max_error"] < 1e-5
    for name, value in scores.items():
        if name.startswith("judge_cos"):
            assert -1.0 <= value <= 1.0, name
    from PIL import Image

    from ifadit.grids import LABEL_HEIGHT

    with Image.open(out / "grid.png") as grid:  # five labelled columns of 32 px faces above 8 rows
        pixels = np.asarray(grid.convert("RGB"))
    assert pixels.shape[1] == 2 + 5 * (32 + 2) and (pixels[:LABEL_HEIGHT] < 128).any()  # dark label text
    assert "judge cos(original, recovered)" in capsys.readouterr().out


def test_keygen_checks_candidate_keys_on_the_trained_model(
    chain: ChainRun, synth_root: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``keygen --config --ckpt_path``: candidates are tried on the recipe's validation faces, the one
    written is a real key file, and neither its secret nor a rejected one's reaches the output."""
    drawn: list[SecretKey] = []
    real_generate = SecretKey.generate

    def recorded() -> SecretKey:
        drawn.append(real_generate())
        return drawn[-1]

    compensator = _run_checkpoint_dir(chain.work, "compensator") / "last.ckpt"
    args = ["keygen", str(tmp_path / "checked.key"), "--config", str(CONF / "compensator.yaml"),
            "--ckpt_path", str(compensator), "--candidates", "3", "--max_anonymized", "1",
            "--check_images", "4"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # the recipe's data root is relative: its tiny SynthFaces render here
        mp.setattr(SecretKey, "generate", staticmethod(recorded))
        assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "drew 3 keys, checked on 4 validation faces" in out and "0 weak" in out
    written = SecretKey.load(tmp_path / "checked.key")
    assert len(drawn) == 3 and written.fingerprint in {s.fingerprint for s in drawn}
    for secret in drawn:
        material = secret._SecretKey__material  # the raw bytes, only to search for them
        for needle in (material.hex(), base64.b64encode(material).decode()):
            assert needle not in out
    # every drawn key weak: a one-line error, and no key file
    weak = [*args[:1], str(tmp_path / "weak.key"), *args[2:-3], "-1", "--check_images", "4",
            "--max_draws", "4"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert cli.main(weak) == 2
    err = capsys.readouterr().err.strip()
    assert "only 0 of 4 drawn keys anonymize" in err and "\n" not in err
    assert not (tmp_path / "weak.key").exists()


def _runs_by_name(work: Path) -> dict[str, object]:
    client = MlflowClient(_sqlite_uri(work))
    experiment = client.get_experiment_by_name("ifadit")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    return {run.info.run_name: run for run in runs}


def test_mlflow_run_has_params_metrics_config_and_sample_grids(chain: ChainRun) -> None:
    client = MlflowClient(_sqlite_uri(chain.work))
    runs = _runs_by_name(chain.work)
    assert set(runs) == {f"conf-{phase}" for phase in CHAIN}  # fast_dev_run logs nothing
    for phase in CHAIN:
        run = runs[f"conf-{phase}"]
        params, metrics = run.data.params, run.data.metrics
        assert run.info.status == "FINISHED"
        assert params["phase"] == phase
        assert params["losses.l1"] == "1.0" and params["optimizer.lr"] == "0.002"
        assert "_instantiator" not in params
        assert {"train/loss", "val/score"} <= set(metrics)
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == list(range(TRAIN_STEPS))
        local = client.download_artifacts(run.info.run_id, "config.yaml", str(chain.work / "dl" / phase))
        config = yaml.safe_load(Path(local).read_text())
        assert config["model"]["phase"] == phase
        assert config["trainer"]["logger"]["init_args"]["run_name"] == f"conf-{phase}"
    assert runs["conf-recognizer"].data.params["num_identities"] == "8"  # filled in by setup()
    assert {"val/same_id_cos", "val/diff_id_cos"} <= set(runs["conf-recognizer"].data.metrics)
    flow = runs["conf-flow"]
    assert flow.data.params["losses.image"] == "0.3"
    # runs can be filtered by their components (registered names), seed and trainer settings
    assert {k: flow.data.params[k] for k in ("flow", "key_scheme", "identity_encoder", "compensator")} == {
        "flow": "allinone", "key_scheme": "mapping", "identity_encoder": "timm", "compensator": "compensator"}
    assert flow.data.params["flow.num_blocks"] == "2" and flow.data.params["discriminator"] == "none"
    assert flow.data.params["seed"] == "0" and flow.data.params["trainer.max_steps"] == str(TRAIN_STEPS)
    experiment = client.get_experiment_by_name("ifadit").experiment_id
    by_flow = client.search_runs([experiment], "params.flow = 'allinone'")
    assert {r.info.run_name for r in by_flow} == {"conf-flow", "conf-compensator"}
    assert {"val/anon_id_cos", "val/recovered_id_cos", "val/wrong_key_id_cos"} <= set(flow.data.metrics)


def _logged_images(client: MlflowClient, run_id: str) -> list[tuple[str, int, str]]:
    """(key, step, artifact path) of the full-size images a run logged with ``log_image(key=, step=)``."""
    found = []
    for artifact in client.list_artifacts(run_id, "images"):
        name = artifact.path.rsplit("/", 1)[-1]
        if name.endswith(".png") and "+compressed" not in name:
            key, _, step, *_ = name.split("+")
            found.append((key.replace("~", "/"), int(step), artifact.path))
    return sorted(found)


@pytest.mark.parametrize(("phase", "columns"), [("disentangle", 2), ("flow", 5)])
def test_sample_grids_are_stepped_images_of_the_expected_layout(
    chain: ChainRun, phase: str, columns: int
) -> None:
    from ifadit.grids import LABEL_HEIGHT

    client = MlflowClient(_sqlite_uri(chain.work))
    run = _runs_by_name(chain.work)[f"conf-{phase}"]
    images = _logged_images(client, run.info.run_id)
    # every training step (image_grid.every_n_steps: 1) and the validation at the end, under two keys
    assert [(key, step) for key, step, _ in images] == [
        ("samples/train", 1), ("samples/train", 2), ("samples/val", 2)]
    local = Path(client.download_artifacts(run.info.run_id, images[-1][2], str(chain.work / "dl" / phase)))
    labelled = hasattr(IFADITTask, "sample_columns")  # labels drawn above the columns by the callback
    with Image.open(local) as image:
        rows, side, pad = 4, 32, 2  # val_sample_count rows of 32 px faces, make_grid's padding
        assert image.format == "PNG" and image.mode == "RGB"
        header = LABEL_HEIGHT if labelled else 0
        assert image.size == (pad + columns * (side + pad), header + pad + rows * (side + pad))


def test_runs_without_a_grid_log_no_samples(chain: ChainRun) -> None:
    client = MlflowClient(_sqlite_uri(chain.work))
    run = _runs_by_name(chain.work)["conf-recognizer"]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]
    assert _logged_images(client, run.info.run_id) == []


def test_no_key_material_reaches_any_output(chain: ChainRun) -> None:
    """The user's key sat in the working folder during every fit and was used by ``ifadit demo``: its
    secret is in no byte of the store, the artifacts, the checkpoints or the demo output."""
    forms = {
        "raw": chain.secret,
        "hex": chain.secret.hex().encode(),
        "HEX": chain.secret.hex().upper().encode(),
        "base64": base64.b64encode(chain.secret),
        "base64url": base64.urlsafe_b64encode(chain.secret).rstrip(b"="),
    }
    scanned = 0
    for path in sorted(chain.work.rglob("*")):
        if not path.is_file() or path == chain.key_file:
            continue
        data = path.read_bytes()
        scanned += 1
        for form, needle in forms.items():
            assert needle not in data, f"the key's {form} form is in {path.relative_to(chain.work)}"
    kinds = {p.suffix for p in chain.work.rglob("*") if p.is_file()}
    assert {".db", ".ckpt", ".png", ".yaml", ".json"} <= kinds and scanned > 10


# -- resume after a kill ------------------------------------------------------------------------------------


def test_sigkilled_fit_resumes_from_its_last_checkpoint(
    tmp_path: Path, synth_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["fit", "--config", str(CONF / "recognizer.yaml"), "--data.root", synth_root,
              "--checkpoint.every_n_train_steps", "2", "--trainer.enable_progress_bar", "false"]
    last = _run_checkpoint_dir(tmp_path, "recognizer") / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ifadit.cli", *common, "--trainer.max_steps", "10000"],
        cwd=tmp_path, env=_subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while not last.exists():
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no last.ckpt within 180 s"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    saved_step = _checkpoint(last)["global_step"]  # checkpoints are written atomically (temp file + rename)
    assert saved_step >= 2 and saved_step % 2 == 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _sqlite_uri(tmp_path))
    client = MlflowClient(_sqlite_uri(tmp_path))
    [killed_run] = client.search_runs(client.get_experiment_by_name("ifadit").experiment_id)
    def logged_steps() -> Counter[int]:
        return Counter(m.step for m in client.get_metric_history(killed_run.info.run_id, "train/loss"))

    before = logged_steps()
    resumed = cli_main([*common, "--trainer.max_steps", str(saved_step + 2), "--ckpt_path", "last"])
    assert resumed.trainer.global_step == saved_step + 2
    # the same MLflow run goes on (no second run under the same name) ...
    assert resumed.trainer.logger.run_id == killed_run.info.run_id
    assert len(client.search_runs(killed_run.info.experiment_id)) == 1
    assert client.get_run(killed_run.info.run_id).info.status == "FINISHED"
    # ... with exactly the two missing steps, numbered on from the checkpoint
    assert logged_steps() - before == Counter([saved_step, saved_step + 1])
    assert _checkpoint(last)["global_step"] == saved_step + 2


# -- distributed ---------------------------------------------------------------------------------------------


def test_ddp_runs_as_two_cpu_processes(tmp_path: Path, synth_root: str) -> None:
    command = [sys.executable, "-m", "ifadit.cli", "fit", "--config", str(CONF / "recognizer.yaml"),
               "--data.root", synth_root, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
               "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.enable_progress_bar", "false"]
    result = subprocess.run(command, cwd=tmp_path, env=_subprocess_env(tmp_path), capture_output=True,
                            text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "distributed_backend=gloo" in output
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output


def test_a_rerun_replaces_the_earlier_run_and_resume_continues_its_own_run(
    tmp_path: Path, synth_root: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A second fresh fit of one recipe owns the run folder (its own last.ckpt, no last-v1.ckpt beside the
    first run's), so ``init_from .../last.ckpt`` chains from it, and ``--ckpt_path last`` restores it and
    goes on logging into its MLflow run, at the steps after the checkpoint's."""
    from ifadit.tracking import MLFLOW_RUN_KEY

    monkeypatch.setenv("MLFLOW_TRACKING_URI", _sqlite_uri(tmp_path))
    common = ["fit", "--config", str(CONF / "recognizer.yaml"), "--data.root", synth_root,
              "--trainer.enable_progress_bar", "false"]
    first = cli_main(common).trainer.logger.run_id
    second = cli_main(common).trainer.logger.run_id
    assert first != second
    folder = _run_checkpoint_dir(tmp_path, "recognizer")
    assert sorted(p.name for p in folder.glob("last*.ckpt")) == ["last.ckpt"]
    assert _checkpoint(folder / "last.ckpt")[MLFLOW_RUN_KEY] == second

    capsys.readouterr()
    resumed = cli_main([*common, "--trainer.max_steps", str(TRAIN_STEPS + 2), "--ckpt_path", "last"])
    assert resumed.trainer.logger.run_id == second
    out = capsys.readouterr().out  # the fit says where it went
    assert f"last: {folder.resolve() / 'last.ckpt'}" in out and f"MLflow run: {second}" in out
    assert resumed.trainer.global_step == TRAIN_STEPS + 2
    client = MlflowClient(_sqlite_uri(tmp_path))
    steps = sorted(m.step for m in client.get_metric_history(second, "train/loss"))
    assert steps == list(range(TRAIN_STEPS + 2))
    assert sorted(m.step for m in client.get_metric_history(first, "train/loss")) == list(range(TRAIN_STEPS))
