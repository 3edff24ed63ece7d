"""The command line: every option's help and spelling, plugins, keygen, the flow demo, its one-line
errors, and the Lightning subcommands' arguments (registered short names, help, run folders)."""

import argparse
import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import LightningDataModule

import ifadit
from ifadit import cli, registry
from ifadit.cli import build_parser, main, normalize_options
from ifadit.keys import SecretKey
from ifadit.lightning_cli import IfaditCLI, cli_main, default_run_name, last_checkpoint, stale_checkpoints
from ifadit.task import PHASES, IFADITTask

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "tests" / "conf"
# YAML files under recipes/ that are not LightningCLI recipes (the flow demo reads its own format).
DEMO_CONFIGS = {"recipes/quickstart/flow_demo.yaml"}
# Recipes whose components need pretrained weights that are not available offline: these are parsed
# (class paths import, argument names and types check out) but not instantiated.
PARSE_ONLY_PREFIXES = ("recipes/ffhq256/",)


def _sqlite_uri(work: Path) -> str:
    return f"sqlite:///{work / 'outputs' / 'mlflow.db'}"


class _ParseOnlyCLI(IfaditCLI):
    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a command writes relative to the CWD (outputs/, data/) lands in the test's folder."""
    monkeypatch.chdir(tmp_path)


def _subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if name not in cli.LIGHTNING_SUBCOMMANDS}


def test_every_option_of_every_subcommand_has_help_and_one_spelling() -> None:
    parsers = _subcommand_parsers()
    assert {"keygen", "score", "evaluate", "anonymize", "recover", "sweep"} <= set(parsers)
    for name, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"ifadit {name} {action.option_strings or action.dest} has no help"
            assert all("-" not in opt[2:] for opt in action.option_strings), (name, action.option_strings)
    # the checkpoint a command reads is --ckpt_path everywhere, as in 'ifadit fit'; the photo commands read a
    # model (a preset name or a checkpoint): --model, with --ckpt_path as its older spelling
    for name in ("keygen", "score", "evaluate"):
        assert "--ckpt_path" in parsers[name]._option_string_actions, name
    for name in ("anonymize", "recover"):
        assert "--model" in parsers[name]._option_string_actions, name


def test_hyphens_and_old_option_names_still_work() -> None:
    assert normalize_options(["score", "--split=val", "--ckpt", "C", "--passphrase-file", "P"]) == [
        "score", "--split=val", "--ckpt_path", "C", "--passphrase_file", "P"]
    assert normalize_options(["anonymize", "a-b.png", "--ckpt-path", "m", "--", "--ckpt_path"]) == [
        "anonymize", "a-b.png", "--model", "m", "--", "--ckpt_path"]
    keygen = normalize_options(["keygen", "k", "--check-config", "r.yaml", "--check-ckpt", "c"])
    args = build_parser().parse_args(keygen)
    assert (args.config, args.ckpt_path) == ("r.yaml", "c")


def test_version_and_python_dash_m(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"ifadit {ifadit.__version__}"
    out = subprocess.run([sys.executable, "-m", "ifadit", "--version"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == f"ifadit {ifadit.__version__}"


def test_plugins_lists_every_group(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for group in (
        "flows:",
        "key_schemes:",
        "identity_encoders:",
        "attribute_encoders:",
        "generators:",
        "recognizers:",
    ):
        assert group in out
    assert "glow" in out and "ifadit.flows.glow:GlowFlow" in out and "[ifadit]" in out
    assert "arcface-irse50" in out and "arcface_irse50" not in out  # one naming style: hyphens


def test_keygen_writes_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "k.key"
    assert main(["keygen", str(path)]) == 0
    secret = SecretKey.load(path)
    out = capsys.readouterr().out
    assert secret.fingerprint in out
    assert base64.b64encode(secret._SecretKey__material).decode() not in out
    assert main(["keygen", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and err.count("\n") == 1
    assert SecretKey.load(path) == secret


def test_keygen_from_passphrase_file(tmp_path):
    (tmp_path / "pw").write_text("violet meadow quantum lantern\n")
    (tmp_path / "pw").chmod(0o600)  # a passphrase file others may read is refused, as a key file is
    args = ["keygen", "--passphrase_file", str(tmp_path / "pw"), "--salt", "00112233445566778899"]
    assert main([*args[:1], str(tmp_path / "a.key"), *args[1:]]) == 0
    assert main([*args[:1], str(tmp_path / "b.key"), *args[1:]]) == 0
    assert SecretKey.load(tmp_path / "a.key") == SecretKey.load(tmp_path / "b.key")


def test_demo_runs_and_recovers(tmp_path, capsys):
    key = SecretKey.generate()
    key.save(tmp_path / "k.key")
    config = tmp_path / "demo.yaml"
    config.write_text(
        "flow: {class_path: realnvp, init_args: {dim: 64, cond_dim: 32, num_blocks: 2}}\n"
        "key_scheme: {class_path: mapping, init_args: {dim: 32, num_layers: 2}}\n"
        "train: {steps: 40, batch_size: 32, lr: 3.0e-3}\n"
        "data: {train_identities: 128, test_identities: 64}\n"
    )
    assert (
        main(["demo", "--config", str(config), "--key", str(tmp_path / "k.key"), "--out", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "flow_demo.json").read_text())
    assert result["key_fingerprint"] == key.fingerprint and key.fingerprint in out
    assert result["roundtrip_max_abs_error"] < 1e-5
    assert result["cos_original_recovered"] > 0.99999
    # a wrong key does not recover: far from the exact recovery
    assert result["cos_original_wrong_key"] < 0.9
    assert result["cos_original_one_bit_key"] < 0.9
    assert base64.b64encode(key._SecretKey__material).decode() not in out + json.dumps(result)


def _private_file(path, text: str) -> int:
    """Write ``text`` readable by its owner only, as a key file must be (others' access is refused first)."""
    path.write_text(text)
    path.chmod(0o600)
    return len(text)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: ["--key", str(d / "missing.key")], "key file not found"),
        (
            lambda d: _private_file(d / "bad.key", "nonsense\n") and ["--key", str(d / "bad.key")],
            "not an ifadit key",
        ),
        (lambda d: [], "give --key"),
        (lambda d: ["--key", str(d / "k.key"), "--config", str(d / "nope.yaml")], "config file not found"),
    ],
)
def test_demo_bad_input_is_one_line(tmp_path, capsys, setup, expected):
    SecretKey.generate().save(tmp_path / "k.key")
    assert main(["demo", *setup(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_console_script_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "ifadit.cli", "plugins", "--group", "key_schemes"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "mapping" in out and "bits" in out


# -- the Lightning subcommands' arguments ------------------------------------------------------------


def test_registered_short_names_resolve_in_config_files_and_on_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "model:\n"
        "  flow: {class_path: glow, init_args: {dim: 8, cond_dim: 8, num_blocks: 1}}\n"
        "  identity_encoder: {class_path: timm}\n"
        "  attribute_encoder: {class_path: timm}\n"
        "  compensator: {class_path: compensator}\n"
        "  generator: {class_path: stylegan2}\n"
        "data: {root: data/relative}\n"
    )
    parsed = _ParseOnlyCLI(args=["--config", str(config), "--model.key_scheme", "bits",
                                 "--model.mapper.class_path=latent", "--trainer.max_steps", "3"], run=False)
    model = parsed.config.model
    assert model.flow.class_path.endswith("GlowFlow") and model.flow.init_args.num_blocks == 1
    # one short name, two groups: the argument's type picks the class
    assert model.identity_encoder.class_path.endswith("TimmIdentityEncoder")
    assert model.attribute_encoder.class_path.endswith("TimmAttributeEncoder")
    assert model.compensator.class_path.endswith("CompensationMLP")
    assert model.generator.class_path.endswith("StyleGAN2Generator")
    assert model.key_scheme.class_path.endswith("BitsKeyScheme")
    assert model.mapper.class_path.endswith("LatentMapper")
    assert parsed.config.data.init_args.root == "data/relative"  # relative paths stay relative to the CWD
    assert parsed.config.trainer.max_steps == 3
    # the older underscore spelling of a registered name, and a class name, find the same classes
    other = _ParseOnlyCLI(args=["--config", str(CONF / "flow.yaml"), "--model.identity_encoder",
                                "facenet_casia", "--model.flow", "RealNVPFlow"], run=False)
    assert other.config.model.identity_encoder.class_path.endswith("FaceNetCASIAEncoder")
    assert other.config.model.flow.class_path.endswith("RealNVPFlow")


def test_a_wrong_component_name_is_one_short_error_naming_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  flow: {class_path: nosuchflow}\n")
    wrong_flag = ["--config", str(CONF / "flow.yaml"), "--model.flow", "allinon"]
    for args in (wrong_flag, ["--config", str(unknown)]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["fit", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) <= 3, err
        assert "--model.flow" in err and "unknown component" in err
        for name in registry.available("flows"):
            assert name in err


def test_help_lists_every_registered_flow_and_a_flows_arguments(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    out = capsys.readouterr().out
    for name in registry.available("flows"):
        cls = registry.get("flows", name)
        assert cls.__name__ in out, f"{name} ({cls.__name__}) missing from fit --help"
    assert "--ckpt_path last resumes" in " ".join(out.split())  # the run-folder rule is documented
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--model.flow.help", "allinone"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "AllInOneFlow" in out and "--model.flow.num_blocks" in out and "--model.flow.clamp" in out


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


def test_run_folder_rules(tmp_path: Path) -> None:
    """``--ckpt_path last`` means the newest last*.ckpt (Lightning's rule); a fit replaces every checkpoint
    of its folder unless it resumes from one of them."""
    assert last_checkpoint(tmp_path / "none") is None and stale_checkpoints(tmp_path / "none", None) == []
    for i, name in enumerate(["best-epoch=0-step=2.ckpt", "last.ckpt", "last-v1.ckpt"]):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    (tmp_path / "notes.txt").write_text("kept")
    assert last_checkpoint(tmp_path) == tmp_path / "last-v1.ckpt"
    every = sorted(tmp_path.glob("*.ckpt"))
    assert stale_checkpoints(tmp_path, None) == every
    assert stale_checkpoints(tmp_path, tmp_path / "elsewhere.ckpt") == every
    assert stale_checkpoints(tmp_path, str(tmp_path / "last.ckpt")) == []


# -- every recipe ------------------------------------------------------------------------------------------


def _recipes() -> list[str]:
    found = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml"))
    tests_conf = sorted(str(p.relative_to(ROOT)) for p in CONF.glob("*.yaml"))
    return tests_conf + [r for r in found if r not in DEMO_CONFIGS]


def test_demo_configs_are_not_training_recipes() -> None:
    from ifadit.demo import load_config

    for name in DEMO_CONFIGS:
        assert "flow" in load_config(ROOT / name) and "model" not in yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("recipe", _recipes())
def test_recipe_parses_and_builds(recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every recipe parses; all but the pretrained-weight ones also build the model, data and trainer,
    with ``init_from`` cleared (a chained recipe's previous checkpoint does not exist here)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _sqlite_uri(tmp_path))
    path = str(ROOT / recipe)
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


def test_every_model_option_of_fit_has_help(capsys: pytest.CaptureFixture) -> None:
    """The task's own options, every loss weight and optimizer setting say what they do."""
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    out = capsys.readouterr().out
    blocks = re.split(r"\n  (?=--)", out)  # one block per option: its name line and its help lines
    model = [b for b in blocks if b.startswith("--model.")]
    assert len(model) > 40

    def help_text(block: str) -> str:  # what follows the option's name and metavar
        first, _, rest = block.partition("\n")
        name_and_help = re.split(r"\s{2,}", first.strip(), maxsplit=1)
        return " ".join(f"{name_and_help[1] if len(name_and_help) > 1 else ''} {rest}".split())

    bare = [b.split()[0] for b in model if help_text(b).startswith("(type")]
    assert not bare, f"fit options without help: {bare}"
