"""``ifadit fit|validate|test|predict``: LightningCLI over :class:`~ifadit.task.IFADITTask` and
:class:`~ifadit.data.FaceDataModule`, with MLflow as the default logger.

Every registered component is imported before parsing, so jsonargparse knows them all as subclasses (``fit
--help`` lists them); registered short names (``--model.flow allinone``, ``class_path: timm``,
``--model.flow.help allinone``) resolve through the registry wherever jsonargparse accepts a class.

Each run checkpoints into a stable folder, ``outputs/checkpoints/<experiment>/<run name>``, that holds one
run's checkpoints: ``--ckpt_path last`` resumes that run (its weights and its MLflow run), and a fit that
does not resume from that folder replaces what an earlier run left there.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ArgumentParser, Namespace
from jsonargparse import _typehints as jsonargparse_typehints
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from ifadit import registry
from ifadit.task import IFADITTask
from ifadit.tracking import (
    DEFAULT_EXPERIMENT,
    HyperparametersCallback,
    ImageGridCallback,
    MLflowRunInCheckpoint,
    MLflowSaveConfigCallback,
    default_artifact_location,
    fit_summary,
    mlflow_uri_default,
    prepare_tracking_uri,
    run_params,
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
FIT_DESCRIPTION = (
    "Train the task from a recipe (--config). Checkpoints go to "
    "outputs/checkpoints/<experiment>/<run name> (run name: <recipe folder>-<recipe stem>), a folder that "
    "holds one run: --ckpt_path last resumes the run whose checkpoints are there (its weights, steps and "
    "MLflow run); any other fit into that folder replaces the checkpoints an earlier run left in it (set "
    "--checkpoint.dirpath or a logger run_name to keep them). "
    "Components take registered short names: --model.flow allinone; --model.flow.help NAME lists a "
    "component's arguments; 'ifadit plugins' lists the names."
)
UNKNOWN_COMPONENT = "unknown component"  # how the resolver's error starts: the CLI shortens such errors
_PARSER_KEY = re.compile(r'Parser key "(?P<key>[^"]+)"')


class ArgsError(ValueError):
    """A model config that cannot be parsed."""


# -- registered short names inside jsonargparse -----------------------------------------------------------

_resolve_by_class_name = jsonargparse_typehints.resolve_class_path_by_name


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_class_path(base: type | tuple[type, ...], name: str) -> str:
    """jsonargparse's class-name resolution with registered names first: ``allinone`` is the class the
    ``ifadit.flows`` entry point ``allinone`` names, when it is a ``base``. A bare name that is neither
    registered nor a known subclass's class name fails with the registered choices."""
    if not isinstance(name, str) or not name or "." in name:
        return _resolve_by_class_name(base, name)
    choices = registry.subclass_choices(base)
    hits = choices.get(registry.find_name(choices, name) or name, [])
    if len(hits) > 1:
        paths = ", ".join(_class_path(c) for c in hits)
        raise ValueError(f"{name!r} names several registered classes ({paths}): give a class path")
    if hits:
        return _class_path(hits[0])
    resolved = _resolve_by_class_name(base, name)
    if "." in resolved or not choices:
        return resolved
    kind = base.__name__ if inspect.isclass(base) else "component"
    raise ValueError(f"{UNKNOWN_COMPONENT} {name!r} for a {kind}; registered: {', '.join(sorted(choices))} "
                     "(or give a class path)")


def install_short_names() -> None:
    """Route jsonargparse's name-to-class resolution through :func:`resolve_class_path` (idempotent)."""
    jsonargparse_typehints.resolve_class_path_by_name = resolve_class_path


def load_plugins() -> None:
    """Import every registered component, so that jsonargparse lists and resolves them as subclasses. A
    plugin that fails to import is left out here (``ifadit plugins`` reports it)."""
    registry.loaded_components()


install_short_names()


def short_error(message: str) -> str | None:
    """One line for an unknown component name (jsonargparse's message for it runs to dozens of lines)."""
    line = next((ln.strip(" -") for ln in message.splitlines() if UNKNOWN_COMPONENT in ln), None)
    if line is None:
        return None
    key = _PARSER_KEY.search(message)
    return f"--{key['key']}: {line}" if key else line


class IfaditArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose unknown-component errors are one line, without the usage block."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        short = short_error(message)
        if short is None or not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        sys.stderr.write(f"{parser.prog.replace(' [options]', '')}: error: {short}\n")
        sys.exit(2)


# -- run folders, resume -----------------------------------------------------------------------------------

def config_files(config: Namespace) -> list[Path]:
    """The config files a parsed config was read from, in order (inline YAML text is no file)."""
    found = []
    for item in config.get("config") or []:
        text = str(getattr(item, "relative", item) or "")
        if text and Path(text).is_file():
            found.append(Path(text))
    return found


def last_checkpoint(dirpath: str | Path) -> Path | None:
    """The checkpoint ``--ckpt_path last`` restores from a run folder: the newest ``last*.ckpt`` (Lightning's
    rule), so that the MLflow run read from it is the run of the weights restored."""
    folder = Path(dirpath)
    if not folder.is_dir():
        return None
    stem = ModelCheckpoint.CHECKPOINT_NAME_LAST
    found = [p for p in folder.iterdir() if p.suffix == ModelCheckpoint.FILE_EXTENSION
             and p.stem.startswith(stem) and p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def stale_checkpoints(dirpath: str | Path, resume_from: str | Path | None) -> list[Path]:
    """The checkpoints a fit into ``dirpath`` replaces: all of them, unless it resumes from one of them."""
    folder = Path(dirpath)
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.glob("*" + ModelCheckpoint.FILE_EXTENSION) if p.is_file())
    if resume_from and any(Path(resume_from).resolve() == p.resolve() for p in found):
        return []
    return found


class FreshRunFolder(Callback):
    """Empties the run's checkpoint folder when a fit starts that does not resume from it, so that its
    ``last.ckpt`` is always this run's (no ``last-v1.ckpt`` beside an older run's ``last.ckpt``, which
    ``init_from`` or ``--ckpt_path last`` would otherwise pick up). Rank 0 only, before the first step; a
    fit that writes no checkpoint (``fast_dev_run``, checkpointing off) leaves the folder alone."""

    def __init__(self, dirpath: str | Path, resume_from: str | Path | None) -> None:
        self.dirpath = Path(dirpath)
        self.resume_from = resume_from

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        mine = self.dirpath.resolve()
        if not any(getattr(cb, "dirpath", None) and Path(cb.dirpath).resolve() == mine
                   for cb in trainer.checkpoint_callbacks):
            return
        stale = stale_checkpoints(self.dirpath, self.resume_from)
        for path in stale:
            path.unlink()
        if stale:
            rank_zero_info(f"replaced {len(stale)} checkpoint(s) of an earlier run in {self.dirpath} "
                           "(--ckpt_path last resumes a run instead)")


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
    recipe's; registered short names work). ``for_checkpoint``: the weights will be loaded from a checkpoint
    next, so components skip their own pretrained-weight files and nothing is chained by ``init_from``."""
    load_plugins()
    config = _plain(dict(model_config))
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


class RunCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` whose ``last.ckpt`` always holds the run's latest validated state.

    Lightning (2.6) writes ``last.ckpt`` only in a step that also writes a best-by-monitor checkpoint, so once
    ``val/score`` stops improving, ``last.ckpt`` stays at the best step: ``--ckpt_path last`` then resumes
    from there, the next phase starts from it, and a finished fit's final weights are never written.
    """

    # After the parent has written its best-by-monitor checkpoint for this step (at the end of validation,
    # or at the end of the training epoch where it saves then), never before it.
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: Trainer) -> None:
        # _should_skip_saving_checkpoint: sanity checks, fast_dev_run, and a step already saved
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class IfaditCLI(LightningCLI):
    """LightningCLI with ifadit's defaults: MLflow logging, checkpoints and sample grids per run.

    Extra argument groups: ``--checkpoint.*`` (a :class:`RunCheckpoint`: last + best by ``val/score``)
    and ``--image_grid.*`` (:class:`~ifadit.tracking.ImageGridCallback`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        load_plugins()
        kwargs.setdefault("model_class", IFADITTask)
        # any LightningDataModule via data.class_path; FaceDataModule when the config names none
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", MLflowSaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"save_to_log_dir": False})
        kwargs.setdefault("trainer_defaults", default_trainer_settings())
        kwargs.setdefault("auto_configure_optimizers", False)  # the task has its own model.optimizer
        kwargs.setdefault("parser_class", IfaditArgumentParser)
        parser_kwargs = {"prog": "ifadit", **(kwargs.get("parser_kwargs") or {})}
        parser_kwargs["fit"] = {"description": FIT_DESCRIPTION, **parser_kwargs.get("fit", {})}
        kwargs["parser_kwargs"] = parser_kwargs
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/score",
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch}-{step}",
        })
        parser.add_lightning_class_args(ImageGridCallback, "image_grid")
        parser.set_defaults({"data": {"class_path": DEFAULT_DATAMODULE}})

    def _active_config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Name the run, give its checkpoints the run's own folder, and place the sqlite store's folder and
        artifacts. What is filled in here is part of the config stored with the run."""
        config = self._active_config()
        mlflow_loggers = [lg for lg in _logger_configs(config.trainer)
                          if str(lg.get("class_path", "")).endswith(".MLFlowLogger")]
        given_names = [lg.init_args.get("run_name") for lg in mlflow_loggers if lg.init_args.get("run_name")]
        run_name = (given_names[0] if given_names
                    else default_run_name(config_files(config), config.model.phase))
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
        if self.subcommand == "fit":
            if config.get("ckpt_path") == "last":
                last = last_checkpoint(config.checkpoint.dirpath)
                config.ckpt_path = str(last) if last else config.ckpt_path
            if mlflow_loggers:
                self._continue_mlflow_run(config, mlflow_loggers[0].init_args)

    @staticmethod
    def _continue_mlflow_run(config: Namespace, logger_args: Namespace) -> None:
        """``--ckpt_path`` resumes the MLflow run that wrote the checkpoint too, instead of a new run under
        the same name; an explicit ``run_id`` wins."""
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc") or logger_args.get("run_id"):
            return
        run_id = run_to_resume(ckpt_path, logger_args.tracking_uri)
        if run_id:
            logger_args.run_id = run_id

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Adds the model-config writer (every checkpoint then rebuilds its model alone), the run-folder
        keeper of a fit, and the hyper-parameter logger and the learning-rate monitor when there is a
        logger."""
        config = self._active_config()
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks: list[Callback] = list(trainer_config.get("callbacks") or [])
        callbacks.append(ModelConfigCallback(config.model))
        if self.subcommand == "fit" and config.checkpoint.get("dirpath"):
            callbacks.append(FreshRunFolder(config.checkpoint.dirpath, config.get("ckpt_path")))
        if trainer_config.get("logger") is not False:
            params = run_params(config, COMPONENT_GROUPS)
            callbacks += [HyperparametersCallback(params), MLflowRunInCheckpoint()]
            if not any(isinstance(cb, LearningRateMonitor) for cb in callbacks):
                callbacks.append(LearningRateMonitor(logging_interval="step"))
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

    def after_fit(self) -> None:
        """Say where the run went: its checkpoints and its MLflow run."""
        if not self.trainer.is_global_zero:
            return
        for line in fit_summary(self.trainer):
            print(line)


def default_trainer_settings() -> dict[str, Any]:
    """The trainer settings a recipe starts from: the MLflow logger on the default store."""
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
