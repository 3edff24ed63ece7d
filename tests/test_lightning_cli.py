"""``ifadit fit|validate|...``: every recipe parses, every phase trains on the CPU (chained through
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

import pytest
import torch
import yaml
from lightning.pytorch import LightningDataModule
from mlflow.tracking import MlflowClient
from PIL import Image

from ifadit import cli
from ifadit.keys import SecretKey
from ifadit.lightning_cli import ArgsError, IfaditCLI, cli_main, default_run_name, expand_args
from ifadit.task import PHASES, IFADITTask

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "tests" / "conf"
# YAML files under recipes/ that are not LightningCLI recipes (the flow demo reads its own format).
DEMO_CONFIGS = {"recipes/quickstart/flow_demo.yaml"}
# Recipes whose components need pretrained weights that are not available offline: these are parsed
# (class paths import, argument names and types check out) but not instantiated.
PARSE_ONLY_PREFIXES = ("recipes/ffhq256/",)
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


def test_short_names_are_expanded_in_config_files_and_on_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "model:\n"
        "  flow: {class_path: glow, init_args: {dim: 8, cond_dim: 8, num_blocks: 1}}\n"
        "  identity_encoder: {class_path: timm}\n"
        "  attribute_encoder: {class_path: timm}\n"
        "  compensator: {class_path: compensator}\n"
        "  generator: {class_path: some.module.Custom}\n"
        "data: {root: data/relative}\n"
    )
    args, files = expand_args(["fit", "--config", str(config), "--model.key_scheme", "bits",
                               "--model.mapper.class_path=latent", "--trainer.max_steps", "3"])
    assert files == [config]
    inline, no_files = expand_args(["-c", "{model: {flow: {class_path: realnvp}}}"])
    assert no_files == [] and inline[0] == "-c"
    assert yaml.safe_load(inline[1])["model"]["flow"] == {"class_path": "ifadit.flows.realnvp.RealNVPFlow"}
    assert args[0] == "fit" and args[1] == "--config"
    expanded = yaml.safe_load(args[2])
    model = expanded["model"]
    assert model["flow"]["class_path"] == "ifadit.flows.glow.GlowFlow"
    assert model["flow"]["init_args"] == {"dim": 8, "cond_dim": 8, "num_blocks": 1}
    # one short name, two groups: the parent key picks the group
    assert model["identity_encoder"]["class_path"] == "ifadit.nets.timm_encoders.TimmIdentityEncoder"
    assert model["attribute_encoder"]["class_path"] == "ifadit.nets.timm_encoders.TimmAttributeEncoder"
    assert model["compensator"]["class_path"] == "ifadit.nets.mappers.CompensationMLP"
    assert model["generator"]["class_path"] == "some.module.Custom"  # full paths pass through
    assert expanded["data"]["root"] == "data/relative"  # relative paths stay relative to the CWD
    assert args[3:] == ["--model.key_scheme", "ifadit.keys.schemes.BitsKeyScheme",
                        "--model.mapper.class_path", "ifadit.nets.mappers.LatentMapper",
                        "--trainer.max_steps", "3"]


def test_bad_config_files_fail_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ArgsError, match="cannot read config file"):
        expand_args(["--config", str(tmp_path / "missing.yaml")])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  flow: {class_path: nosuchflow}\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(unknown)])
    assert exit_info.value.code == 2
    assert "no flows component named 'nosuchflow'" in capsys.readouterr().err


def test_default_run_name_is_stable_per_recipe() -> None:
    assert default_run_name([Path("recipes/synthfaces/flow.yaml")], "flow") == "synthfaces-flow"
    assert default_run_name([Path("a.yaml"), CONF / "recognizer.yaml"], "recognizer") == "conf-recognizer"
    assert default_run_name([], "joint") == "joint"


def test_print_config_shows_resolved_class_paths(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(CONF / "flow.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["flow"]["class_path"] == "ifadit.flows.allinone.AllInOneFlow"
    assert printed["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.MLFlowLogger"
    assert printed["checkpoint"]["monitor"] == "val/score" and printed["checkpoint"]["save_last"] is True


# -- every recipe ------------------------------------------------------------------------------------------


def _recipes() -> list[str]:
    found = sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").rglob("*.yaml"))
    tests_conf = sorted(str(p.relative_to(REPO)) for p in CONF.glob("*.yaml"))
    return tests_conf + [r for r in found if r not in DEMO_CONFIGS]


class _ParseOnlyCLI(IfaditCLI):
    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def test_demo_configs_are_not_training_recipes() -> None:
    from ifadit.demo import load_config

    for name in DEMO_CONFIGS:
        assert "flow" in load_config(REPO / name) and "model" not in yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("recipe", _recipes())
def test_recipe_parses_and_builds(recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every recipe parses; all but the pretrained-weight ones also build the model, data and trainer,
    with ``init_from`` cleared (a chained recipe's previous checkpoint does not exist here)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _sqlite_uri(tmp_path))
    path = str(REPO / recipe)
    parsed = _ParseOnlyCLI(args=["--config", path], run=False)
    assert parsed.config.model.phase in PHASES
    if recipe.startswith(PARSE_ONLY_PREFIXES):
        return
    built = cli_main(["--config", path, "--model.init_from", "null", "--trainer.logger", "false"], run=False)
    assert isinstance(built.model, IFADITTask) and built.model.phase == parsed.config.model.phase
    assert isinstance(built.datamodule, LightningDataModule)


def test_any_datamodule_can_be_named_and_face_data_is_the_default() -> None:
    base = ["--config", str(CONF / "recognizer.yaml"), "--trainer.logger", "false"]
    default = cli_main(base, run=False)
    assert type(default.datamodule).__name__ == "FaceDataModule" and default.datamodule.size == 32
    other = cli_main([*base, "--data.class_path", "lightning.pytorch.demos.boring_classes.BoringDataModule"],
                     run=False)
    assert type(other.datamodule).__name__ == "BoringDataModule"


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
        "--ckpt", str(_run_checkpoint_dir(chain.work, "flow") / "last.ckpt"),
        "--judge-config", str(CONF / "recognizer.yaml"),
        "--judge-ckpt", str(_run_checkpoint_dir(chain.work, "recognizer") / "last.ckpt"),
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
    assert (out / "grid.png").stat().st_size > 0
    assert "judge cos(original, recovered)" in capsys.readouterr().out


def test_keygen_checks_candidate_keys_on_the_trained_model(
    chain: ChainRun, synth_root: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``keygen --check-ckpt``: candidates are tried on the recipe's validation faces, the one written is a
    real key file, and neither its secret nor a rejected one's reaches the output."""
    drawn: list[SecretKey] = []
    real_generate = SecretKey.generate

    def recorded() -> SecretKey:
        drawn.append(real_generate())
        return drawn[-1]

    compensator = _run_checkpoint_dir(chain.work, "compensator") / "last.ckpt"
    args = ["keygen", str(tmp_path / "checked.key"), "--check-config", str(CONF / "compensator.yaml"),
            "--check-ckpt", str(compensator), "--candidates", "3", "--max-anonymized", "1",
            "--check-images", "4"]
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
    weak = [*args[:1], str(tmp_path / "weak.key"), *args[2:-3], "-1", "--check-images", "4",
            "--max-draws", "4"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert cli.main(weak) == 2
    err = capsys.readouterr().err.strip()
    assert "only 0 of 4 drawn keys anonymize" in err and "\n" not in err
    assert not (tmp_path / "weak.key").exists()


def test_a_subspace_flow_trains_and_its_checkpoint_rebuilds_the_model(
    chain: ChainRun, synth_root: str
) -> None:
    """The flow in the principal identity subspace, fitted when phase 2 starts, saved, and rebuilt from the
    checkpoint alone (its stored config) with the same outputs."""
    from ifadit import Anonymizer

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(chain.work)
        args = ["fit", "--config", str(CONF / "flow_subspace.yaml"), "--data.root", synth_root,
                "--model.init_from", str(_run_checkpoint_dir(chain.work, "disentangle") / "last.ckpt"),
                "--trainer.logger", "false"]
        fitted = cli_main(args)
    flow = fitted.model.model.flow
    assert bool(flow.subspace.fitted) and flow.dim == 64 and flow.flow.dim == 8
    checkpoint = chain.work / "outputs" / "checkpoints" / "ifadit" / "conf-flow_subspace" / "last.ckpt"
    rebuilt = Anonymizer.from_checkpoint(checkpoint).model
    z = torch.nn.functional.normalize(torch.randn(3, 64), dim=1)
    cond = rebuilt.key_scheme(SecretKey.load(chain.key_file), batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.flow(z, cond)[0], flow.cpu().eval()(z, cond)[0])
        torch.testing.assert_close(rebuilt.flow.inverse(rebuilt.flow(z, cond)[0], cond), z)


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
    assert {"val/anon_id_cos", "val/recovered_id_cos", "val/wrong_key_id_cos"} <= set(flow.data.metrics)


@pytest.mark.parametrize(("phase", "columns"), [("disentangle", 2), ("flow", 5)])
def test_sample_grids_are_pngs_of_the_expected_layout(chain: ChainRun, phase: str, columns: int) -> None:
    client = MlflowClient(_sqlite_uri(chain.work))
    run = _runs_by_name(chain.work)[f"conf-{phase}"]
    names = sorted(a.path for a in client.list_artifacts(run.info.run_id, "samples"))
    # every training step (image_grid.every_n_steps: 1) and the validation at the end
    assert names == ["samples/step_000001.png", "samples/step_000002.png", "samples/val_step_000002.png"]
    local = Path(client.download_artifacts(run.info.run_id, names[-1], str(chain.work / "dl" / phase)))
    with Image.open(local) as image:
        rows, side, pad = 4, 32, 2  # val_sample_count rows of 32 px faces, make_grid's padding
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == (pad + columns * (side + pad), pad + rows * (side + pad))


def test_runs_without_a_grid_log_no_samples(chain: ChainRun) -> None:
    client = MlflowClient(_sqlite_uri(chain.work))
    run = _runs_by_name(chain.work)["conf-recognizer"]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]


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
