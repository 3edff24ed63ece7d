"""``ifadit evaluate`` end to end on tiny checkpoints written like Lightning's: the table, JSON, Markdown and
grid, the model-holder attacks, a real sqlite MLflow run, the ``ifadit score`` numbers reproduced, no key
material anywhere, and one-line errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ifadit import cli
from ifadit.evaluation import evaluate_headline
from ifadit.keys import SecretKey
from ifadit.lightning_cli import cli_main
from ifadit.recognizers import build_recognizer

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Flow-phase and recognizer-phase checkpoints (untrained, as the tiny recipes build them) and a key."""
    work = tmp_path_factory.mktemp("evaluate")
    for phase, folder in (("flow", "conf-flow"), ("recognizer", "judge")):
        args = ["--config", str(CONF / f"{phase}.yaml"), "--trainer.logger", "false"]
        task = cli_main(args, run=False).model
        path = work / folder / "last.ckpt"
        path.parent.mkdir()
        torch.save({"state_dict": task.state_dict(), "ifadit_phase": phase}, path)
    SecretKey.generate().save(work / "user.key")
    return work


@pytest.fixture(autouse=True)
def _in_work(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work)  # the recipes' data root (data/synthfaces) and outputs/ land here


def _args(work: Path, *extra: str) -> list[str]:
    return ["evaluate", "--ckpt_path", str(work / "conf-flow" / "last.ckpt"),
            "--config", str(CONF / "flow.yaml"), "--data", "val", *extra]


def test_evaluate_writes_reports_logs_mlflow_and_reproduces_score(work: Path, capsys) -> None:
    judge_spec = f"{work / 'judge' / 'last.ckpt'}:config={CONF / 'recognizer.yaml'}"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    out = work / "out"
    args = _args(work, "--recognizer", judge_spec, "--key", str(work / "user.key"), "--anonymizations", "3",
                 "--out", str(out), "--tracking_uri", uri, "--attack_keys", "7", "--attack_steps", "5",
                 "--attack_pairs", "20", "--attack_batch", "8")
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    secret = SecretKey.load(work / "user.key")
    report = json.loads((out / "evaluation.json").read_text())
    meta, results = report["meta"], report["results"]
    assert meta["key_fingerprint"] == secret.fingerprint and meta["split"] == "val"
    assert meta["images"] == 8 and meta["num_anonymizations"] == 3  # 2 val identities x 4 images
    assert meta["calibration"]["judge"]["far"] <= 1e-3  # no published threshold: calibrated on val
    assert meta["lpips"].startswith("n/a") and results["reversibility/lpips"] is None
    for group in ("anonymity", "reversibility", "security", "diversity", "quality", "utility"):
        assert any(name.startswith(group + "/") for name in results), group
    assert results["quality/fid"] is not None and results["reversibility/latent/max_abs"] < 1e-5
    assert "headline: judge_cos_original_anonymized" in printed and "calibrated on val" in printed
    # the attacks: trained on 20 train-split faces, 7 search keys, linkability over the 8 val faces
    assert meta["attack_keys"] == 7 and "5 steps of 8 on 20 train-split faces" in meta["attack_inverter"]
    assert results["security/key_search/latent/keys"] == 7 and results["security/key_search/judge/pairs"] == 8
    assert results["security/linkability/judge/per_photo_key/faces"] == 8
    assert 0.0 <= results["security/linkability/judge/same_key/auc"] <= 1.0
    assert results["security/learned_inversion/judge/chance"] == pytest.approx(
        results["security/linkability/judge/original/different_cos"]
    )
    assert results["security/learned_inversion/judge/right_key"] == results["reversibility/judge/cos"]
    assert "attack (judge): learned inversion:" in printed and "a key per photo" in printed
    markdown = (out / "evaluation.md").read_text()
    assert "## anonymity" in markdown and "`anonymity/judge/reid_rate`" in markdown
    assert (out / "grid.png").stat().st_size > 0

    # the same judge and key through ifadit score's code: the same numbers
    task, datamodule = cli._build_task(str(CONF / "flow.yaml"), str(work / "conf-flow" / "last.ckpt"), True)
    datamodule.setup("test")
    judge = build_recognizer(judge_spec)
    scores = evaluate_headline(task.model, judge.encoder, datamodule.val_dataloader(), secret)
    for ours, theirs in (
        ("anonymity/judge/cos", scores.judge_cos_original_anonymized),
        ("reversibility/judge/cos", scores.judge_cos_original_recovered),
        ("reversibility/judge/reconstruction/cos", scores.judge_cos_original_reconstruction),
        ("reversibility/psnr", scores.recovery_psnr_db),
        ("security/no_key/psnr", scores.anonymized_psnr_db),
    ):
        assert results[ours] == pytest.approx(theirs, abs=1e-4), ours

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ifadit").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "evaluate-conf-flow"
    assert run.data.params["key_fingerprint"] == secret.fingerprint
    assert run.data.metrics["anonymity/judge/cos"] == pytest.approx(results["anonymity/judge/cos"])
    name = "security/learned_inversion/judge/cos"
    assert run.data.metrics[name] == pytest.approx(results[name])
    assert run.data.params["attack_keys"] == "7"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation.json", "evaluation.md", "grid.png"} <= artifacts

    material = secret._SecretKey__material
    needles = [material, material.hex().encode(), base64.b64encode(material)]
    haystacks = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    haystacks += [(work / "mlflow.db").read_bytes(), printed.encode()]
    assert not any(needle in hay for needle in needles for hay in haystacks)


def test_evaluate_without_a_recognizer_uses_the_models_own_encoder(work: Path, capsys) -> None:
    out = work / "own"
    args = _args(work, "--limit", "3", "--no_detector", "--no_fid", "--no_mlflow", "--no_attacks",
                 "--out", str(out))
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "judged by the model's own identity encoder" in printed
    assert "public validation key" in printed
    report = json.loads((out / "evaluation.json").read_text())
    assert report["meta"]["images"] == 3
    assert report["results"]["quality/fid"] is None and "utility/detection_rate" not in report["results"]
    assert "anonymity/own_encoder/cos" in report["results"]
    assert not any("linkability" in name for name in report["results"])  # --no_attacks


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--recognizer", "nosuch"], "no recognizers component named 'nosuch'"),
        (["--recognizer", "judge/last.ckpt"], "needs the recipe it was trained with"),
        (["--anonymizations", "0"], "--anonymizations must be >= 1"),
        (["--attack_keys", "-1"], "--attack_keys must be >= 0"),
        (["--key", "missing.key"], "missing.key"),
    ],
)
def test_bad_input_is_one_line(work: Path, capsys, extra: list[str], message: str) -> None:
    assert cli.main([*_args(work, "--no_mlflow"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ifadit evaluate: error: ") and message in err and err.count("\n") == 1
