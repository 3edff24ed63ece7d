"""MLflow tracking for training runs: the default store, the resolved config and sample grids as artifacts.

Runs go to a local sqlite store by default (``sqlite:///outputs/mlflow.db``; ``MLFLOW_TRACKING_URI``
overrides it), with artifacts in a folder beside the database rather than mlflow's ``./mlruns``. Nothing
keyed by a user secret is ever logged here: training draws random keys, validation uses the public
``VALIDATION_KEYS``, and the callbacks below log only the config, metrics and rendered images.
"""

from __future__ import annotations

import fcntl
import inspect
import os
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import numpy as np
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ifadit import registry
from ifadit.grids import labelled_grid
from ifadit.weights import WeightsError, load_checkpoint

DEFAULT_TRACKING_URI = "sqlite:///outputs/mlflow.db"
DEFAULT_EXPERIMENT = "ifadit"
CONFIG_ARTIFACT = "config.yaml"
SAMPLES_DIR = "samples"
_SQLITE_PREFIX = "sqlite:///"
MAX_PARAM_KEY_LENGTH = 250  # mlflow's limit on parameter names
MAX_PARAM_VALUE_LENGTH = 250  # where Lightning's MLFlowLogger cuts parameter values
# Checkpoint entry naming the MLflow run that wrote it: ``--ckpt_path`` continues that run.
MLFLOW_RUN_KEY = "ifadit_mlflow_run_id"
# Checkpoint entry holding the logging step of the next batch, so a resumed fit's metrics follow on.
LOGGER_STEP_KEY = "ifadit_logger_step"


def mlflow_uri_default() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project's local sqlite store (relative to the CWD)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``sqlite:////abs`` is absolute), else None."""
    if not uri.startswith(_SQLITE_PREFIX):
        return None
    path = uri[len(_SQLITE_PREFIX):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def prepare_tracking_uri(
    uri: str, experiment: str | None = None, artifact_location: str | None = None
) -> None:
    """Make a sqlite store ready before any run touches it: its folder, its schema and the experiment.

    Two processes opening a new sqlite store at once race in mlflow's schema migration ("duplicate column
    name: step", seen when the quickstart trains its two recognizers in parallel) and in creating the
    experiment; one exclusive file lock around both makes the first process do it and the others find it."""
    path = sqlite_path(uri)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client = mlflow.tracking.MlflowClient(uri)
            client.search_experiments(max_results=1)  # the first query creates or migrates the schema
            if experiment and client.get_experiment_by_name(experiment) is None:
                client.create_experiment(experiment, artifact_location=artifact_location)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def default_artifact_location(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """Artifacts beside a sqlite database (``<db folder>/mlartifacts/<experiment>``), so one folder holds a
    whole store (mlflow would use ``./mlruns`` of whatever the CWD is); None (the server's choice) for any
    other store. Only used when mlflow creates the experiment."""
    path = sqlite_path(uri)
    return None if path is None else str((path.parent / "mlartifacts" / experiment).resolve())


def find_mlflow_logger(trainer: L.Trainer) -> MLFlowLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)


def local_log_dir(trainer: L.Trainer) -> Path:
    """The first logger's folder, else the run's checkpoint folder, else ``default_root_dir`` (without a
    logger Lightning's choice is the working directory: a user's checkout would collect ``config.yaml``
    and ``samples/``). Unlike ``trainer.log_dir`` this makes no collective call, so rank-0-only code may
    use it without stalling the other ranks."""
    for logger in trainer.loggers:
        folder = getattr(logger, "log_dir", None) or logger.save_dir
        if folder:
            return Path(folder)
    checkpoints = getattr(trainer.checkpoint_callback, "dirpath", None)
    return Path(checkpoints) if checkpoints else Path(trainer.default_root_dir)


class MLflowRunInCheckpoint(L.Callback):
    """Writes the MLflow run id into every checkpoint, so a fit resumed from it logs into the same run
    (see :func:`run_to_resume`), and the logging step the next batch takes, so the resumed metrics go on at
    the step after the last one logged. Lightning re-derives that step when it restores a checkpoint and
    is one too far for a checkpoint written at the end of an epoch; the stored step sets it right. A run id
    is an opaque store name: nothing secret."""

    def __init__(self) -> None:
        self.next_step: int | None = None  # the logging step of the batch after the last one trained
        self.resume_step: int | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loop = trainer.fit_loop.epoch_loop
        # called before Lightning counts this batch's optimizer step (it does not count accumulating ones)
        self.next_step = loop._batches_that_stepped + (0 if loop._should_accumulate() else 1)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        logger = find_mlflow_logger(trainer)
        run_id = logger.run_id if logger is not None and trainer.is_global_zero else None
        if run_id:
            checkpoint[MLFLOW_RUN_KEY] = run_id
        if self.next_step is not None:
            checkpoint[LOGGER_STEP_KEY] = self.next_step

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        step = checkpoint.get(LOGGER_STEP_KEY)
        self.resume_step = step if isinstance(step, int) else None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.resume_step is not None:  # the first batch after a restore: Lightning's loops are reset
            trainer.fit_loop.epoch_loop._batches_that_stepped = self.resume_step
            self.resume_step = None


def run_to_resume(checkpoint: str | Path, tracking_uri: str) -> str | None:
    """The id of the MLflow run that wrote ``checkpoint``, when that run is still in the store at
    ``tracking_uri``; None otherwise (no such file, an older checkpoint without the entry, another store)."""
    path = Path(checkpoint)
    if not path.is_file():
        return None
    try:  # mmap: only the entry is needed, not the weights
        state = load_checkpoint(path, mmap=True)
    except WeightsError:  # an unreadable checkpoint is reported by Lightning when it restores it
        return None
    run_id = state.get(MLFLOW_RUN_KEY) if isinstance(state, dict) else None
    if not isinstance(run_id, str):
        return None
    try:
        run = mlflow.tracking.MlflowClient(tracking_uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        rank_zero_warn(f"{path} was written by MLflow run {run_id}, not in this store: a new run starts")
        return None
    return run_id if run.info.lifecycle_stage == "active" else None


class MLflowSaveConfigCallback(SaveConfigCallback):
    """Stores the resolved CLI config as the run's ``config.yaml`` artifact.

    The stock callback writes into ``trainer.log_dir``, which an MLflow logger on a database store does
    not have. The base class calls :meth:`save_config` on rank 0 only. Without an MLflow logger the config
    goes to :func:`local_log_dir`.
    """

    def __init__(
        self,
        parser: LightningArgumentParser,
        config: Any,
        config_filename: str = CONFIG_ARTIFACT,
        overwrite: bool = False,
        multifile: bool = False,
        save_to_log_dir: bool = False,
    ) -> None:
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        logger = find_mlflow_logger(trainer)
        if logger is not None:
            logger.experiment.log_text(logger.run_id, text, self.config_filename)
            return
        folder = local_log_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.config_filename).write_text(text)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hyper-parameters as ``losses.l1``-style names (the names of the CLI options). Private
    entries (``_instantiator``) are dropped and names are cut to mlflow's length limit."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if is_dataclass(value) and not isinstance(value, type):
            value = asdict(value)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name[:MAX_PARAM_KEY_LENGTH]] = value
    return flat


def _unlogged_params(logger: MLFlowLogger, params: dict[str, Any]) -> dict[str, Any]:
    """The params a (resumed) MLflow run does not hold yet. MLflow refuses to change a logged value, so a
    resumed fit with other settings keeps the first values and says which differ."""
    logged = logger.experiment.get_run(logger.run_id).data.params
    changed = sorted(
        k for k, v in params.items() if k in logged and logged[k] != str(v)[:MAX_PARAM_VALUE_LENGTH]
    )
    if changed:
        rank_zero_warn(f"MLflow run {logger.run_id} keeps its first values of the changed params "
                       f"{', '.join(changed)}")
    return {k: v for k, v in params.items() if k not in logged}


class HyperparametersCallback(L.Callback):
    """Logs the module's hyper-parameters once its ``setup`` has run.

    Lightning's own logging sends the copy taken inside ``save_hyperparameters``, which misses what the
    task adds afterwards (the ``losses`` and ``optimizer`` dataclasses, a ``num_identities`` read from the
    data in ``setup``); the CLI turns that off (``enable_autolog_hparams: false``) and uses this instead.
    Loggers run on rank 0 only and truncate long values themselves. ``extra``: run-level params the module
    does not hold (the CLI's component names, seed and trainer settings, :func:`run_params`).
    """

    def __init__(self, extra: Mapping[str, Any] | None = None) -> None:
        self.extra = dict(extra or {})
        self.logged = False

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logged:
            return
        self.logged = True
        if not trainer.is_global_zero:  # loggers write on rank 0 only
            return
        params = {**self.extra, **flatten_params(dict(pl_module.hparams))}
        if trainer.datamodule is not None and getattr(trainer.datamodule, "hparams", None):
            params.update(flatten_params(dict(trainer.datamodule.hparams), "data."))
        for logger in trainer.loggers:
            unlogged = _unlogged_params(logger, params) if isinstance(logger, MLFlowLogger) else params
            if unlogged:
                logger.log_hyperparams(unlogged)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)


# -- MLflow params of a run --------------------------------------------------------------------------------

_SCALARS = (str, int, float, bool, type(None))


def component_name(spec: Any, group: str) -> str:
    """A component's registered name, else its class path; ``none`` when it is not set."""
    if spec is None:
        return "none"
    class_path = str(spec.get("class_path", "")) if isinstance(spec, Namespace | Mapping) else str(spec)
    module, _, attr = class_path.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[attr]), attr)
    except (ImportError, AttributeError, ValueError):
        return class_path
    if not inspect.isclass(cls):
        return class_path
    return registry.name_of(group, cls) or class_path


def run_params(config: Namespace, groups: Mapping[str, str]) -> dict[str, Any]:
    """What every run logs so runs can be filtered by it: each component (``groups``: model argument ->
    registry group) by name (``flow: allinone``) with its scalar init args (``flow.num_blocks``), the data
    module, the seed and the trainer settings. Config values only: a key is never part of a config."""
    params: dict[str, Any] = {}
    model = config.get("model") or Namespace()
    for key, group in groups.items():
        spec = model.get(key)
        params[key] = component_name(spec, group)
        init = spec.get("init_args") if isinstance(spec, Namespace) else None
        for arg, value in (init.items() if isinstance(init, Namespace) else []):
            if isinstance(value, _SCALARS) and "." not in arg:
                params[f"{key}.{arg}"] = value
    data = config.get("data")
    if isinstance(data, Namespace):
        params["data"] = str(data.get("class_path"))
    params["seed"] = config.get("seed_everything")
    for arg, value in (config.get("trainer") or Namespace()).items():
        if isinstance(value, _SCALARS) and "." not in arg:
            params[f"trainer.{arg}"] = value
    return params


def fit_summary(trainer: L.Trainer) -> list[str]:
    """Lines naming a finished fit's checkpoints and MLflow run (paths, URI, run id): nothing secret."""
    lines = []
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, ModelCheckpoint) and (checkpoint.last_model_path or checkpoint.best_model_path):
        lines.append(f"checkpoints: {checkpoint.dirpath}")
        for what, path in (("last", checkpoint.last_model_path), ("best", checkpoint.best_model_path)):
            if path:
                lines.append(f"  {what}: {path}")
    logger = find_mlflow_logger(trainer)
    if logger is not None and logger.run_id:
        uri = getattr(logger, "_tracking_uri", None) or mlflow_uri_default()
        experiment = getattr(logger, "_experiment_name", None) or logger.experiment_id
        lines.append(f"MLflow run: {logger.run_id} (experiment {experiment!r}, store {uri})")
        lines.append(f"  browse: mlflow ui --backend-store-uri {uri}")
    return lines


class ImageGridCallback(L.Callback):
    """Logs sample grids of the module as MLflow images under one key per kind, stepped by the global step
    (the MLflow UI's step slider walks through them): ``samples/train`` every ``every_n_steps`` training
    steps, ``samples/val`` at the end of every validation epoch.

    The grid is composed here from ``pl_module.sample_columns(images)`` (ordered label -> images in
    [-1, 1]; None: nothing to show, as in the recognizer phase), one face per row, labels above the
    columns. The images are the first validation batch, kept from the first validation run so grids stay
    comparable over the run; until one exists the current training batch is used. Only rank 0 renders and
    logs. Without an MLflow logger the grids go to ``samples/<key>_step_000123.png`` in the run's folder.

    Args:
        every_n_steps: log a grid every this many training steps (0: only at validation).
        num_images: faces (rows) per grid.
        on_validation: also log a grid at the end of every validation epoch.
    """

    TRAIN_KEY = "samples/train"
    VAL_KEY = "samples/val"

    def __init__(self, every_n_steps: int = 500, num_images: int = 8, on_validation: bool = True) -> None:
        super().__init__()
        if every_n_steps < 0 or num_images < 1:
            raise ValueError("every_n_steps must be >= 0 (0: never during training) and num_images >= 1")
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.on_validation = on_validation
        self.fixed_images: Tensor | None = None
        self.fixed_parameters: Tensor | None = None  # SynthFaces parameters of those images (render phase)
        self.logged: set[tuple[str, int]] = set()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.fixed_images is None and batch_idx == 0 and dataloader_idx == 0:
            self.fixed_images = batch["image"][: self.num_images].detach().cpu().clone()
            if "parameters" in batch:
                self.fixed_parameters = batch["parameters"][: self.num_images].detach().cpu().clone()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_validation and not trainer.sanity_checking and self.fixed_images is not None:
            images, parameters = self.fixed_images, self.fixed_parameters
            self.log_grid(trainer, pl_module, images, key=self.VAL_KEY, parameters=parameters)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            if self.fixed_images is not None:
                images, parameters = self.fixed_images, self.fixed_parameters
            else:
                images, parameters = batch["image"][: self.num_images], batch.get("parameters")
            self.log_grid(trainer, pl_module, images, parameters=parameters)

    @staticmethod
    def render(
        pl_module: L.LightningModule, images: Tensor, parameters: Tensor | None = None
    ) -> np.ndarray | None:
        """The module's grid for ``images`` (and their SynthFaces ``parameters``, which the render phase
        draws from) as (H, W, 3) uint8, or None when it has none."""
        images = images.to(pl_module.device)
        sample_columns = getattr(pl_module, "sample_columns", None)
        if not callable(sample_columns):
            return None
        if parameters is None:
            columns = sample_columns(images)
        else:
            columns = sample_columns(images, parameters.to(pl_module.device))
        return None if columns is None else labelled_grid(columns)

    def log_grid(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        images: Tensor,
        key: str = TRAIN_KEY,
        parameters: Tensor | None = None,
    ) -> tuple[str, int] | None:
        """Render and log one grid; returns its (key, step) (None on other ranks, without a grid, or when
        this step's grid under this key is already logged)."""
        entry = (key, trainer.global_step)
        if not trainer.is_global_zero or entry in self.logged:
            return None
        pixels = self.render(pl_module, images, parameters)
        if pixels is None:
            return None
        logger = find_mlflow_logger(trainer)
        if logger is not None:
            logger.experiment.log_image(logger.run_id, pixels, key=key, step=trainer.global_step)
        else:
            from PIL import Image

            path = local_log_dir(trainer) / SAMPLES_DIR / f"{key.rsplit('/', 1)[-1]}_step_{entry[1]:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
        self.logged.add(entry)
        return entry
