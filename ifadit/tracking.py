"""MLflow tracking for training runs: the default store, the resolved config and sample grids as artifacts.

Runs go to a local sqlite store by default (``sqlite:///outputs/mlflow.db``; ``MLFLOW_TRACKING_URI``
overrides it), with artifacts in a folder beside the database rather than mlflow's ``./mlruns``. Nothing
keyed by a user secret is ever logged here: training draws random keys, validation uses the public
``VALIDATION_KEYS``, and the callbacks below log only the config, metrics and rendered images.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import numpy as np
import torch
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

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
    (see :func:`run_to_resume`). A run id is an opaque store name: nothing secret."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        logger = find_mlflow_logger(trainer)
        run_id = logger.run_id if logger is not None and trainer.is_global_zero else None
        if run_id:
            checkpoint[MLFLOW_RUN_KEY] = run_id


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
    Loggers run on rank 0 only and truncate long values themselves.
    """

    def __init__(self) -> None:
        self.logged = False

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logged:
            return
        self.logged = True
        if not trainer.is_global_zero:  # loggers write on rank 0 only
            return
        params = flatten_params(dict(pl_module.hparams))
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


def grid_to_uint8(grid: Tensor) -> np.ndarray:
    """A (3, H, W) image in [0, 1] as an (H, W, 3) uint8 array, as PNG writers want it."""
    return grid.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class ImageGridCallback(L.Callback):
    """Logs ``pl_module.sample_grid(images)`` as ``samples/step_000123.png`` every ``every_n_steps`` training
    steps and as ``samples/val_step_000123.png`` at the end of every validation epoch.

    The images are the first validation batch, kept from the first validation run so that grids are
    comparable over the whole run; until one exists the current training batch is used. Only rank 0
    renders and logs. A module whose ``sample_grid`` returns None (the recognizer phase) logs nothing.
    """

    def __init__(self, every_n_steps: int = 500, num_images: int = 8, on_validation: bool = True) -> None:
        super().__init__()
        if every_n_steps < 0 or num_images < 1:
            raise ValueError("every_n_steps must be >= 0 (0: never during training) and num_images >= 1")
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.on_validation = on_validation
        self.fixed_images: Tensor | None = None
        self.logged: set[str] = set()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.fixed_images is None and batch_idx == 0 and dataloader_idx == 0:
            self.fixed_images = batch["image"][: self.num_images].detach().cpu().clone()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_validation and not trainer.sanity_checking and self.fixed_images is not None:
            self.log_grid(trainer, pl_module, self.fixed_images, prefix="val_")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            images = self.fixed_images if self.fixed_images is not None else batch["image"][: self.num_images]
            self.log_grid(trainer, pl_module, images)

    def log_grid(
        self, trainer: L.Trainer, pl_module: L.LightningModule, images: Tensor, prefix: str = ""
    ) -> str | None:
        """Render and store one grid; returns its artifact name (None on other ranks, without a grid, or
        when this step's grid is already stored)."""
        name = f"{SAMPLES_DIR}/{prefix}step_{trainer.global_step:06d}.png"
        if not trainer.is_global_zero or name in self.logged:
            return None
        sample_grid = getattr(pl_module, "sample_grid", None)
        grid = sample_grid(images.to(pl_module.device)) if callable(sample_grid) else None
        if grid is None:
            return None
        pixels = grid_to_uint8(grid)
        logger = find_mlflow_logger(trainer)
        if logger is not None:
            logger.experiment.log_image(logger.run_id, pixels, artifact_file=name)
        else:
            from PIL import Image

            path = local_log_dir(trainer) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
        self.logged.add(name)
        return name
