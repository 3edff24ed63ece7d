"""``ifadit fit|validate|test|predict``: LightningCLI over :class:`~ifadit.task.IFADITTask` and
:class:`~ifadit.data.FaceDataModule`, with MLflow as the default logger.

Registered short names (``class_path: glow``, ``class_path: timm``) work for every component, in config
files and on the command line (``--model.flow glow``): they are rewritten to import paths before
jsonargparse sees them. Each run checkpoints into a stable folder,
``outputs/checkpoints/<experiment>/<run name>``, so ``--ckpt_path last`` resumes it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ifadit import registry
from ifadit.task import IFADITTask
from ifadit.tracking import (
    DEFAULT_EXPERIMENT,
    HyperparametersCallback,
    ImageGridCallback,
    MLflowRunInCheckpoint,
    MLflowSaveConfigCallback,
    default_artifact_location,
    mlflow_uri_default,
    prepare_tracking_uri,
    run_to_resume,
)

# The registry group of every component argument of IFADITTask.
COMPONENT_GROUPS: dict[str, str] = {
    "identity_encoder": "identity_encoders",
    "attribute_encoder": "attribute_encoders",
    "generator": "generators",
    "discriminator": "discriminators",
    "flow": "flows",
    "key_scheme": "key_schemes",
    "mapper": "mappers",
    "compensator": "mappers",
}
MLFLOW_LOGGER = "lightning.pytorch.loggers.MLFlowLogger"  # the default logger's class_path
DEFAULT_DATAMODULE = "ifadit.data.FaceDataModule"
CHECKPOINT_ROOT = Path("outputs") / "checkpoints"
_CONFIG_FLAGS = ("-c", "--config")
_COMPONENT_FLAG = re.compile(r"^--model\.(?P<key>\w+)(?:\.class_path)?$")


class ArgsError(ValueError):
    """A config file that cannot be read or names an unknown component."""


def expand_config_text(text: str, source: str = "<config>") -> str:
    """A YAML config with registered short names rewritten to import paths, as YAML text."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ArgsError(f"{source} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ArgsError(f"{source} must hold a mapping at the top level")
    try:
        expanded = registry.expand_short_names(config, COMPONENT_GROUPS)
    except registry.RegistryError as exc:
        raise ArgsError(f"{source}: {exc}") from None
    return yaml.safe_dump(expanded, sort_keys=False)


def _expand_component_value(key: str, value: str) -> str:
    group = COMPONENT_GROUPS.get(key)
    if group is None or "." in value or value.lstrip().startswith(("{", "[")):
        return value  # not a component, already a path, or an inline YAML/JSON object
    try:
        return registry.class_path(group, value)
    except registry.RegistryError:
        return value  # e.g. a bare class name jsonargparse resolves itself


def _is_inline_yaml(value: str) -> bool:
    """``--config '{trainer: {max_steps: 3}}'``: jsonargparse takes config text as well as a path."""
    return value.lstrip().startswith("{") or "\n" in value


def expand_args(args: Sequence[str]) -> tuple[list[str], list[Path]]:
    """Command-line arguments with short names expanded, and the config files they named.

    Every ``--config FILE`` is read here and handed on as YAML text (jsonargparse's ``--config`` accepts
    either): the text holds no path of its own, so relative paths in it keep meaning "from the CWD".
    """
    out: list[str] = []
    files: list[Path] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        flag, sep, inline = arg.partition("=")
        takes_next = not sep and i + 1 < len(items)
        value = inline if sep else (items[i + 1] if takes_next else None)
        step = 1 if sep else 2
        if flag in _CONFIG_FLAGS and value is not None:
            if _is_inline_yaml(value):
                out += [flag, expand_config_text(value)]
            else:
                path = Path(value)
                try:
                    text = path.read_text(encoding="utf-8")
                except OSError as exc:
                    reason = exc.strerror or type(exc).__name__
                    raise ArgsError(f"cannot read config file {value}: {reason}") from None
                files.append(path)
                out += [flag, expand_config_text(text, value)]
            i += step
            continue
        match = _COMPONENT_FLAG.match(flag)
        if match and value is not None:
            out += [flag, _expand_component_value(match["key"], value)]
            i += step
            continue
        out.append(arg)
        i += 1
    return out, files


def default_run_name(config_files: Sequence[Path], phase: str | None) -> str:
    """``<folder>-<stem>`` of the last config file (``synthfaces-flow``), else the phase: stable across
    reruns of one recipe, which is what makes ``--ckpt_path last`` find the run's checkpoints."""
    if config_files:
        last = config_files[-1]
        parent = last.resolve().parent.name
        return f"{parent}-{last.stem}" if parent else last.stem
    return phase or "run"


def _logger_configs(trainer_config: Namespace) -> list[Namespace]:
    loggers = trainer_config.get("logger")
    if loggers is None or isinstance(loggers, bool):
        return []
    return [lg for lg in (loggers if isinstance(loggers, list) else [loggers]) if isinstance(lg, Namespace)]


# Checkpoint entry holding the resolved ``model`` section, so a checkpoint alone rebuilds its model.
MODEL_CONFIG_KEY = "ifadit_model_config"
# Task arguments never stored with the model: a path to the previous phase's checkpoint (the weights are in
# this one) and a path to a key file (never a key, but no reason to keep where it lives).
_UNSTORED_TASK_ARGS = ("init_from", "predict_key_file")
# Component arguments that load pretrained weights at construction: off when a checkpoint holds the weights.
_WEIGHT_LOADING_ARGS = {"checkpoint": None, "backbone_checkpoint": None, "pretrained": False}


def _plain(value: Any) -> Any:
    """Nested Namespaces, tuples and paths as JSON-like builtins (what ``torch.load(weights_only=True)``
    reads back)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def model_config_for_checkpoint(model_config: Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` section as stored in checkpoints: class paths and init args, without file paths
    that only mattered while training (``init_from``, ``predict_key_file``)."""
    config = _plain(model_config)
    for key in _UNSTORED_TASK_ARGS:
        if key in config:
            config[key] = None
    return config


class ModelConfigCallback(Callback):
    """Writes the resolved ``model`` config into every checkpoint (``checkpoint["ifadit_model_config"]``),
    so ``ifadit.Anonymizer.from_checkpoint(ckpt)`` needs no recipe. It holds class paths and init args only:
    no secret (a key is never part of the config), no data."""

    def __init__(self, model_config: Namespace | Mapping[str, Any]) -> None:
        self.model_config = model_config_for_checkpoint(model_config)

    def on_save_checkpoint(
        self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[MODEL_CONFIG_KEY] = json.loads(json.dumps(self.model_config))


def _without_weight_loading(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _without_weight_loading(v) for k, v in value.items()}
        init = out.get("init_args")
        if "class_path" in out and isinstance(init, dict):
            for key, off in _WEIGHT_LOADING_ARGS.items():
                if key in init:
                    init[key] = off
            if "allow_random_init" in init:
                init["allow_random_init"] = True  # the weights come from the checkpoint right after
        return out
    if isinstance(value, list):
        return [_without_weight_loading(v) for v in value]
    return value


def build_task_from_config(model_config: Mapping[str, Any], for_checkpoint: bool = True) -> IFADITTask:
    """An :class:`IFADITTask` from a ``model`` section (as stored by :class:`ModelConfigCallback`, or a
    recipe's, with short names allowed). ``for_checkpoint``: the weights will be loaded from a checkpoint
    next, so components skip their own pretrained-weight files and nothing is chained by ``init_from``."""
    config = registry.expand_short_names({"model": _plain(dict(model_config))}, COMPONENT_GROUPS)["model"]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(IFADITTask, "model", fail_untyped=False, sub_configs=True)

    def parse(model: dict[str, Any]) -> Namespace:
        try:
            return parser.parse_object({"model": model})
        except Exception as exc:  # jsonargparse raises its own error types; callers show one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArgsError(f"invalid model config: {first}") from None

    parsed = parse(config)
    if for_checkpoint:  # sanitised after parsing, so that defaults a recipe leaves out are switched too
        parsed = parse(_without_weight_loading(model_config_for_checkpoint(parsed.model)))
    return parser.instantiate_classes(parsed).model


class IfaditCLI(LightningCLI):
    """LightningCLI with ifadit's defaults: MLflow logging, checkpoints and sample grids per run.

    Extra argument groups: ``--checkpoint.*`` (a :class:`ModelCheckpoint`: last + best by ``val/score``)
    and ``--image_grid.*`` (:class:`~ifadit.tracking.ImageGridCallback`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.config_files: list[Path] = []
        kwargs.setdefault("model_class", IFADITTask)
        # any LightningDataModule via data.class_path; FaceDataModule when the config names none
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", MLflowSaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"save_to_log_dir": False})
        kwargs.setdefault("trainer_defaults", default_trainer_settings())
        kwargs.setdefault("auto_configure_optimizers", False)  # the task has its own model.optimizer
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/score",
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch}-{step}",
        })
        parser.add_lightning_class_args(ImageGridCallback, "image_grid")
        parser.set_defaults({"data": {"class_path": DEFAULT_DATAMODULE}})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, dict | Namespace):
            self.config = parser.parse_object(args)
            return
        argv = list(sys.argv[1:] if args is None else args)
        try:
            argv, self.config_files = expand_args(argv)
        except ArgsError as exc:
            parser.error(str(exc))
        self.config = parser.parse_args(argv)

    def _active_config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Name the run, give its checkpoints the run's own folder, and place the sqlite store's folder and
        artifacts. What is filled in here is part of the config stored with the run."""
        config = self._active_config()
        mlflow_loggers = [lg for lg in _logger_configs(config.trainer)
                          if str(lg.get("class_path", "")).endswith(".MLFlowLogger")]
        given_names = [lg.init_args.get("run_name") for lg in mlflow_loggers if lg.init_args.get("run_name")]
        run_name = given_names[0] if given_names else default_run_name(self.config_files, config.model.phase)
        experiment = DEFAULT_EXPERIMENT
        for logger in reversed(mlflow_loggers):  # the first logger's experiment names the checkpoint folder
            init = logger.init_args
            experiment = init.get("experiment_name") or DEFAULT_EXPERIMENT
            init.run_name = init.get("run_name") or run_name
            init.tracking_uri = init.get("tracking_uri") or mlflow_uri_default()
            if not init.get("artifact_location"):
                init.artifact_location = default_artifact_location(init.tracking_uri, experiment)
            prepare_tracking_uri(init.tracking_uri, experiment, init.artifact_location)
        if config.checkpoint.get("dirpath") is None:
            root_dir = config.trainer.get("default_root_dir")
            root = Path(root_dir) / "checkpoints" if root_dir else CHECKPOINT_ROOT
            config.checkpoint.dirpath = str(root / experiment / run_name)
        if self.subcommand == "fit" and mlflow_loggers:
            self._continue_mlflow_run(config, mlflow_loggers[0].init_args)

    @staticmethod
    def _continue_mlflow_run(config: Namespace, logger_args: Namespace) -> None:
        """``--ckpt_path`` resumes the MLflow run that wrote the checkpoint too, instead of a new run under
        the same name; an explicit ``run_id`` wins."""
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or logger_args.get("run_id"):
            return
        last = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
        checkpoint = Path(config.checkpoint.dirpath) / last if ckpt_path == "last" else Path(ckpt_path)
        run_id = run_to_resume(checkpoint, logger_args.tracking_uri)
        if run_id:
            logger_args.run_id = run_id

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Adds the model-config writer (every checkpoint then rebuilds its model alone), and the
        hyper-parameter logger and the learning-rate monitor when there is a logger."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks: list[Callback] = list(trainer_config.get("callbacks") or [])
        callbacks.append(ModelConfigCallback(self._active_config().model))
        if trainer_config.get("logger") is not False:
            callbacks += [HyperparametersCallback(), MLflowRunInCheckpoint()]
            if not any(isinstance(cb, LearningRateMonitor) for cb in callbacks):
                callbacks.append(LearningRateMonitor(logging_interval="step"))
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)


def default_trainer_settings() -> dict[str, Any]:
    return {
        "logger": {
            "class_path": MLFLOW_LOGGER,
            "init_args": {"experiment_name": DEFAULT_EXPERIMENT, "tracking_uri": mlflow_uri_default()},
        },
        # HyperparametersCallback logs them after setup(), when the task's values are complete
        "enable_autolog_hparams": False,
    }


def cli_main(args: Sequence[str] | None = None, **kwargs: Any) -> IfaditCLI:
    """Run ``ifadit <subcommand> ...`` in this process; returns the CLI (model, trainer) for inspection."""
    return IfaditCLI(args=list(args) if args is not None else None, **kwargs)
