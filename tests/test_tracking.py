"""MLflow helpers and callbacks, on a tiny module against a real sqlite store (no mocks of mlflow)."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torchvision
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger
from mlflow.tracking import MlflowClient
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ifadit.grids import GRID_PADDING, LABEL_HEIGHT, grid_to_uint8, labelled_grid
from ifadit.tracking import (
    DEFAULT_TRACKING_URI,
    MAX_PARAM_KEY_LENGTH,
    MLFLOW_RUN_KEY,
    HyperparametersCallback,
    ImageGridCallback,
    MLflowRunInCheckpoint,
    MLflowSaveConfigCallback,
    default_artifact_location,
    flatten_params,
    mlflow_uri_default,
    prepare_tracking_uri,
    run_params,
    run_to_resume,
    sqlite_path,
)

QUIET_ONE_STEP = ["--trainer.max_steps", "1", "--trainer.enable_checkpointing", "false",
                  "--trainer.enable_progress_bar", "false"]


def _faces(count: int, seed: int) -> list[dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, 8, 8, generator=generator) * 2 - 1
    return [{"image": images[i], "identity": torch.tensor(i % 2)} for i in range(count)]


class RandomFaces(L.LightningDataModule):
    """Batches in the FaceDataModule format: {"image": (B, 3, H, W) in [-1, 1], "identity": ...}."""

    def __init__(self, train: int = 4, val: int = 4, batch_size: int = 2) -> None:
        super().__init__()
        self.train_set, self.val_set, self.batch_size = _faces(train, 1), _faces(val, 2), batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


@dataclass
class Weights:
    first: float = 1.0
    second: float = 0.5


class GridModule(L.LightningModule):
    """Records the images each ``sample_columns`` call received; the columns are the images and their
    negatives."""

    def __init__(self, width: int = 3, with_grid: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams["weights"] = Weights()  # added after save_hyperparameters, like the task's losses
        self.layer = nn.Linear(width, 1)
        self.with_grid = with_grid
        self.grid_inputs: list[Tensor] = []

    def setup(self, stage: str) -> None:
        self.hparams["from_setup"] = 8  # like the recognizer's num_identities

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.layer(batch["image"].mean(dim=(2, 3))).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val/score", self.layer(batch["image"].mean(dim=(2, 3))).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def sample_columns(self, images: Tensor) -> dict[str, Tensor] | None:
        self.grid_inputs.append(images.detach().cpu().clone())
        if not self.with_grid:
            return None
        return {"original": images, "negated": -images}


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a run writes relative to the CWD (outputs/, mlruns/) lands in the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module (creating its tables is the slow part)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _mlflow_logger(store: str, experiment: str, run_name: str) -> MLFlowLogger:
    # artifacts beside the database (mlflow's own default is ./mlruns under whatever the CWD is)
    return MLFlowLogger(experiment_name=experiment, tracking_uri=store, run_name=run_name,
                        artifact_location=default_artifact_location(store, experiment))


def _trainer(tmp_path: Path, logger: object, callbacks: list, **kwargs: object) -> L.Trainer:
    settings = {"max_epochs": 2, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                "enable_model_summary": False, "enable_checkpointing": False, "log_every_n_steps": 1}
    return L.Trainer(default_root_dir=tmp_path, logger=logger, callbacks=callbacks, accelerator="cpu",
                     **{**settings, **kwargs})


# -- store helpers -----------------------------------------------------------------------------------------


def test_default_uri_is_the_local_sqlite_store_unless_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri_default() == DEFAULT_TRACKING_URI == "sqlite:///outputs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_uri_default() == "http://127.0.0.1:5000"


def test_sqlite_paths_and_artifact_folder(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///outputs/mlflow.db") == Path("outputs/mlflow.db")
    assert sqlite_path(f"sqlite:///{tmp_path}/a/b.db") == tmp_path / "a" / "b.db"
    assert sqlite_path("http://127.0.0.1:5000") is None
    assert sqlite_path("sqlite:///:memory:") is None
    assert default_artifact_location("sqlite:///outputs/mlflow.db", "exp") == str(
        tmp_path / "outputs" / "mlartifacts" / "exp"
    )
    assert default_artifact_location("http://127.0.0.1:5000") is None
    prepare_tracking_uri("sqlite:///deep/er/mlflow.db")
    assert (tmp_path / "deep" / "er").is_dir()


def test_flatten_params_uses_cli_style_names_within_mlflow_limits() -> None:
    long_key = "k" * 300
    flat = flatten_params({
        "phase": "flow", "_instantiator": "x", "losses": {"l1": 1.0, "inner": {"deep": 2}},
        "weights": Weights(), long_key: 1, "betas": (0.5, 0.99),
    })
    assert flat == {
        "phase": "flow", "losses.l1": 1.0, "losses.inner.deep": 2, "weights.first": 1.0,
        "weights.second": 0.5, "k" * MAX_PARAM_KEY_LENGTH: 1, "betas": (0.5, 0.99),
    }


# -- callbacks ---------------------------------------------------------------------------------------------


def _logged_images(client: MlflowClient, run_id: str) -> dict[tuple[str, int], str]:
    """(key, step) -> artifact path of the full-size images logged with ``log_image(key=, step=)``."""
    found = {}
    for artifact in client.list_artifacts(run_id, "images"):
        name = artifact.path.rsplit("/", 1)[-1]
        if name.endswith(".png") and "+compressed" not in name:
            key, _, step, *_ = name.split("+")
            found[(key.replace("~", "/"), int(step))] = artifact.path
    return found


def test_image_grids_are_stepped_mlflow_images_from_the_fixed_validation_batch(
    tmp_path: Path, store: str
) -> None:
    """2 steps per epoch, 2 epochs, a grid every 3 steps: validation grids at steps 2 and 4, a training
    grid at step 3 — all three drawn from the first validation batch, under one key per kind."""
    logger = _mlflow_logger(store, "grids", "grids")
    grids = ImageGridCallback(every_n_steps=3, num_images=2)
    module = GridModule()
    _trainer(tmp_path, logger, [grids]).fit(module, RandomFaces())
    client = MlflowClient(store)
    images = _logged_images(client, logger.run_id)
    assert sorted(images) == [("samples/train", 3), ("samples/val", 2), ("samples/val", 4)]
    first_val_images = torch.stack([item["image"] for item in _faces(2, 2)])
    assert len(module.grid_inputs) == 3
    for inputs in module.grid_inputs:
        torch.testing.assert_close(inputs, first_val_images)
    local = client.download_artifacts(logger.run_id, images[("samples/train", 3)], str(tmp_path / "dl"))
    with Image.open(local) as image:
        pixels = np.asarray(image.convert("RGB"))
    # two columns (original | negated), a face per row, the labels in a strip above
    rows = torch.stack([first_val_images, -first_val_images], dim=1).flatten(0, 1)
    body = grid_to_uint8(torchvision.utils.make_grid((rows + 1) / 2, nrow=2, padding=GRID_PADDING))
    np.testing.assert_array_equal(pixels[LABEL_HEIGHT:], body)
    np.testing.assert_array_equal(pixels, labelled_grid({"original": first_val_images,
                                                         "negated": -first_val_images}))
    strip = pixels[:LABEL_HEIGHT]
    side = first_val_images.shape[-1]
    for column in range(2):  # some ink above each column, none across the gap between them
        left = GRID_PADDING + column * (side + GRID_PADDING)
        assert (strip[:, left:left + side] < 128).any()
    assert (strip[:, side + GRID_PADDING:side + 2 * GRID_PADDING] == 255).all()


def test_labels_differ_and_columns_must_match() -> None:
    faces = torch.zeros(1, 3, 16, 16)
    one = labelled_grid({"a": faces, "b": faces})
    other = labelled_grid({"anonymized": faces, "b": faces})
    assert one.shape == other.shape and (one[:LABEL_HEIGHT] != other[:LABEL_HEIGHT]).any()
    np.testing.assert_array_equal(one[LABEL_HEIGHT:], other[LABEL_HEIGHT:])
    with pytest.raises(ValueError, match="equally shaped"):
        labelled_grid({"a": faces, "b": torch.zeros(2, 3, 16, 16)})


def test_training_grids_use_the_training_batch_until_validation_has_run(tmp_path: Path) -> None:
    grids = ImageGridCallback(every_n_steps=1, num_images=2, on_validation=False)
    module = GridModule()
    _trainer(tmp_path, False, [grids], max_epochs=1).fit(module, RandomFaces())
    train_images = torch.stack([item["image"] for item in _faces(4, 1)])
    assert len(module.grid_inputs) == 2
    torch.testing.assert_close(module.grid_inputs[0], train_images[:2])
    torch.testing.assert_close(module.grid_inputs[1], train_images[2:])
    # no MLflow logger: the PNGs go under the trainer's folder
    files = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert files == ["train_step_000001.png", "train_step_000002.png"]


def test_no_grid_means_no_image_and_other_ranks_render_nothing(tmp_path: Path, store: str) -> None:
    logger = _mlflow_logger(store, "grids", "no-grid")
    module = GridModule(with_grid=False)
    _trainer(tmp_path, logger, [ImageGridCallback(every_n_steps=1)]).fit(module, RandomFaces())
    assert module.grid_inputs  # it was asked ...
    assert MlflowClient(store).list_artifacts(logger.run_id, "images") == []  # ... and stored nothing
    other_rank = types.SimpleNamespace(global_step=5, is_global_zero=False)
    asked = GridModule()
    assert ImageGridCallback().log_grid(other_rank, asked, torch.zeros(1, 3, 8, 8)) is None
    assert asked.grid_inputs == []


def test_run_params_name_components_seed_and_trainer_settings() -> None:
    config = Namespace(
        seed_everything=7,
        model=Namespace(
            flow=Namespace(class_path="ifadit.flows.allinone.AllInOneFlow",
                           init_args=Namespace(dim=8, num_blocks=2, hidden=[4, 4])),
            key_scheme=Namespace(class_path="ifadit.keys.schemes.MappingKeyScheme", init_args=Namespace()),
            mapper=Namespace(class_path="torch.nn.Identity", init_args=Namespace()),
            discriminator=None,
        ),
        data=Namespace(class_path="ifadit.data.FaceDataModule", init_args=Namespace(root="x")),
        trainer=Namespace(max_steps=3, precision="32-true", logger=Namespace(class_path="a.B")),
    )
    groups = {"flow": "flows", "key_scheme": "key_schemes", "mapper": "mappers", "discriminator": "x"}
    assert run_params(config, groups) == {
        "flow": "allinone", "flow.dim": 8, "flow.num_blocks": 2, "key_scheme": "mapping",
        "mapper": "torch.nn.Identity", "discriminator": "none", "data": "ifadit.data.FaceDataModule",
        "seed": 7, "trainer.max_steps": 3, "trainer.precision": "32-true",
    }


def test_hyperparameters_are_logged_after_setup(tmp_path: Path, store: str) -> None:
    logger = _mlflow_logger(store, "params", "params")
    trainer = _trainer(tmp_path, logger, [HyperparametersCallback({"flow": "glow", "seed": 3})], max_epochs=1,
                       enable_autolog_hparams=False)
    trainer.fit(GridModule(width=3), RandomFaces())
    params = MlflowClient(store).get_run(logger.run_id).data.params
    assert params == {"width": "3", "with_grid": "True", "weights.first": "1.0", "weights.second": "0.5",
                      "from_setup": "8", "flow": "glow", "seed": "3"}


def test_a_resumed_run_logs_only_new_params_and_names_the_changed_ones(tmp_path: Path, store: str) -> None:
    first = _mlflow_logger(store, "params", "resumed")
    _trainer(tmp_path, first, [HyperparametersCallback()], max_epochs=1,
             enable_autolog_hparams=False).fit(GridModule(width=3), RandomFaces())
    again = MLFlowLogger(experiment_name="params", tracking_uri=store, run_id=first.run_id)
    trainer = _trainer(tmp_path, again, [HyperparametersCallback()], max_epochs=1,
                       enable_autolog_hparams=False)
    module = GridModule(width=3, with_grid=False)  # one setting changed on resume
    with pytest.warns(UserWarning, match=r"keeps its first values of the changed params with_grid$"):
        trainer.fit(module, RandomFaces())
    params = MlflowClient(store).get_run(first.run_id).data.params
    assert params["with_grid"] == "True" and params["width"] == "3"  # MLflow keeps what was logged first


def test_checkpoints_name_their_mlflow_run_and_a_resume_finds_it(tmp_path: Path, store: str) -> None:
    logger = _mlflow_logger(store, "resume", "resume")
    trainer = _trainer(tmp_path, logger, [], max_epochs=1)
    trainer.fit(GridModule(), RandomFaces())
    checkpoint: dict = {}
    MLflowRunInCheckpoint().on_save_checkpoint(trainer, trainer.lightning_module, checkpoint)
    assert checkpoint == {MLFLOW_RUN_KEY: logger.run_id}
    written = tmp_path / "run.ckpt"
    torch.save(checkpoint, written)
    assert run_to_resume(written, store) == logger.run_id
    # an older checkpoint without the entry, a missing file, a run of another store: start a new run
    torch.save({"state_dict": {}}, tmp_path / "old.ckpt")
    assert run_to_resume(tmp_path / "old.ckpt", store) is None
    assert run_to_resume(tmp_path / "missing.ckpt", store) is None
    other_store = f"sqlite:///{tmp_path / 'other.db'}"
    prepare_tracking_uri(other_store)
    with pytest.warns(UserWarning, match="not in this store: a new run starts"):
        assert run_to_resume(written, other_store) is None
    MlflowClient(store).delete_run(logger.run_id)
    assert run_to_resume(written, store) is None


def test_save_config_callback_stores_the_resolved_config_as_an_artifact(tmp_path: Path, store: str) -> None:
    """The stock SaveConfigCallback needs trainer.log_dir, which MLflow on sqlite lacks; this one logs
    the config to the run instead."""
    cli = LightningCLI(
        GridModule, RandomFaces, save_config_callback=MLflowSaveConfigCallback,
        trainer_defaults={"logger": {
            "class_path": "lightning.pytorch.loggers.MLFlowLogger",
            "init_args": {"tracking_uri": store, "experiment_name": "config",
                          "artifact_location": default_artifact_location(store, "config")},
        }},
        args=["fit", "--model.width", "3", *QUIET_ONE_STEP],
    )
    run_id = cli.trainer.logger.run_id
    local = MlflowClient(store).download_artifacts(run_id, "config.yaml", str(tmp_path / "dl"))
    config = yaml.safe_load(Path(local).read_text())
    assert config["model"]["width"] == 3
    assert config["trainer"]["max_steps"] == 1


def test_save_config_callback_without_mlflow_writes_into_the_log_folder(tmp_path: Path) -> None:
    cli = LightningCLI(
        GridModule, RandomFaces, save_config_callback=MLflowSaveConfigCallback,
        trainer_defaults={"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                     "init_args": {"save_dir": str(tmp_path / "csv"), "name": "run"}}},
        args=["fit", "--model.width", "3", *QUIET_ONE_STEP],
    )
    assert isinstance(cli.trainer.logger, CSVLogger)
    written = Path(cli.trainer.logger.log_dir) / "config.yaml"
    assert yaml.safe_load(written.read_text())["model"]["width"] == 3


def test_save_config_callback_without_a_logger_writes_next_to_the_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "outputs" / "run"
    cli = LightningCLI(
        GridModule, RandomFaces, save_config_callback=MLflowSaveConfigCallback,
        trainer_defaults={"logger": False, "callbacks": [ModelCheckpoint(dirpath=str(checkpoints))]},
        args=["fit", "--model.width", "3", "--trainer.max_steps", "1",
              "--trainer.enable_progress_bar", "false"],
    )
    assert cli.trainer.loggers == []
    assert yaml.safe_load((checkpoints / "config.yaml").read_text())["model"]["width"] == 3
    assert not (tmp_path / "config.yaml").exists()  # not into the working directory


def _prepare_in_child(uri: str) -> None:
    from ifadit.tracking import prepare_tracking_uri

    prepare_tracking_uri(uri, "ifadit", None)


def test_parallel_processes_share_a_new_sqlite_store(tmp_path) -> None:
    """The quickstart trains two recognizers at once on one new store: schema and experiment are made once."""
    import multiprocessing

    import mlflow

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_prepare_in_child, args=(uri,)) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0, 0]
    names = [e.name for e in mlflow.tracking.MlflowClient(uri).search_experiments()]
    assert names.count("ifadit") == 1
