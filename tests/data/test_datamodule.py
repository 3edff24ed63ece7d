"""FaceDataModule: both sources, folder layouts, and augmentation on training batches only."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from ifadit.data import FaceDataModule
from ifadit.data.datamodule import load_face, scan_face_folder

SYNTH = {"size": 32, "num_identities": 20, "images_per_identity": 4}


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = colour
    pixels[: size[1] // 2, : size[0] // 2] = 255 - np.array(colour)  # something to resize
    Image.fromarray(pixels).save(path)


def test_synthfaces_source_batches_and_disjoint_identities(tmp_path: Path) -> None:
    dm = FaceDataModule(root=str(tmp_path), batch_size=8, **SYNTH)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["identity"].shape == (8,)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    seen = {}
    for name, loader in [("val", dm.val_dataloader()), ("test", dm.test_dataloader())]:
        seen[name] = {int(i) for b in loader for i in b["identity"]}
    train_ids = {int(i) for b in dm.train_dataloader() for i in b["identity"]}
    assert not train_ids & seen["val"] and not train_ids & seen["test"] and not seen["val"] & seen["test"]
    assert sum(len(b["image"]) for b in dm.predict_dataloader()) == len(dm.datasets["test"])
    assert dm.num_classes == 20


def test_folder_flat_without_identities(tmp_path: Path) -> None:
    for i in range(10):
        write_image(tmp_path / f"{i:05d}.png", (10 * i, 100, 200), size=(40 + i, 40))  # some not square
    dm = FaceDataModule(source="folder", root=str(tmp_path), size=16, batch_size=4)
    dm.setup()
    sizes = {split: len(dataset) for split, dataset in dm.datasets.items()}
    assert sizes == {"train": 8, "val": 1, "test": 1}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16)
    assert (batch["identity"] == -1).all()
    assert dm.num_classes == 0
    all_paths = [p for split in ("train", "val", "test") for b in dm._loader(split) for p in b["path"]]
    assert sorted(all_paths) == sorted(str(p) for p in tmp_path.glob("*.png"))


def test_folder_with_identity_subfolders_splits_by_identity(tmp_path: Path) -> None:
    people = [f"person_{k}" for k in range(10)]
    for k, person in enumerate(people):
        for j in range(3):
            write_image(tmp_path / person / f"{j}.jpg", (20 * k, 10 * j, 50))
    dm = FaceDataModule(source="folder", root=str(tmp_path), size=24, batch_size=64)
    dm.setup()
    assert dm.num_classes == 10 and dm.identity_names == people
    ids = {s: {int(i) for b in dm._loader(s) for i in b["identity"]} for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert set().union(*ids.values()) == set(range(10))
    train_batch = next(iter(dm.train_dataloader()))
    for path, identity in zip(train_batch["path"], train_batch["identity"], strict=True):
        assert Path(path).parent.name == people[int(identity)]


def test_ffhq_chunk_folders_are_not_identities(tmp_path: Path) -> None:
    for chunk in ("00000", "01000"):
        for j in range(3):
            write_image(tmp_path / chunk / f"{int(chunk) + j:05d}.png", (j * 50, 0, 0))
    files, labels = scan_face_folder(tmp_path)
    assert len(files) == 6 and labels is None
    files, labels = scan_face_folder(tmp_path, identities=True)  # forced
    assert labels == ["00000"] * 3 + ["01000"] * 3
    with pytest.raises(FileNotFoundError):
        scan_face_folder(tmp_path / "missing")


def test_folder_with_split_subfolders(tmp_path: Path) -> None:
    for split, people in {"train": ["ann", "bob"], "val": ["cy"], "test": ["dee", "eve"]}.items():
        for person in people:
            for j in range(2):
                write_image(tmp_path / split / person / f"{j}.png", (j * 90, 30, 30))
    dm = FaceDataModule(source="folder", root=str(tmp_path), size=16, batch_size=2, predict_split="val")
    dm.setup()
    assert dm.identity_names == ["ann", "bob", "cy", "dee", "eve"]
    assert {int(i) for b in dm.test_dataloader() for i in b["identity"]} == {3, 4}
    assert {int(i) for b in dm.predict_dataloader() for i in b["identity"]} == {2}


def test_load_face_crops_resizes_and_scales(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)
    pixels[:, 20:40] = (255, 0, 0)  # the centre square is pure red; the sides are black
    Image.fromarray(pixels).save(path)
    image = load_face(path, 10)
    assert image.shape == (3, 10, 10)
    assert torch.allclose(image[0], torch.ones(10, 10), atol=1e-6)
    assert torch.allclose(image[1:], -torch.ones(2, 10, 10), atol=1e-6)


class _Recorder(L.LightningModule):
    """Keeps the batches Lightning hands to each step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.train_images: list[Tensor] = []
        self.val_images: list[Tensor] = []

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self.train_images.append(batch["image"].clone())
        return self.layer(batch["image"].mean((1, 2, 3))[:, None]).sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_images.append(batch["image"].clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _run(dm: FaceDataModule) -> _Recorder:
    module = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    return module


def _matches_a_raw_image(images: Tensor, raw: Tensor) -> Tensor:
    """For each image, whether it equals (to float noise) some un-augmented image of the set."""
    distance = torch.cdist(images.flatten(1), raw.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    return distance.min(1).values < 1e-4


@pytest.mark.parametrize("augment", [False, True])
def test_augmentation_changes_training_batches_only(tmp_path: Path, augment: bool) -> None:
    dm = FaceDataModule(root=str(tmp_path), batch_size=16, augment=augment, **SYNTH)
    module = _run(dm)
    raw_train = dm.datasets["train"].images.float() / 127.5 - 1
    trained = torch.cat(module.train_images)
    assert len(trained) == 32
    matched = _matches_a_raw_image(trained, raw_train)
    if augment:
        assert matched.float().mean() < 0.5  # most training images were changed
        assert trained.min() >= -1 and trained.max() <= 1
    else:
        assert matched.all()
    raw_val = torch.stack([dm.datasets["val"][i]["image"] for i in range(len(module.val_images[0]))])
    assert torch.equal(module.val_images[0], raw_val)  # validation is never augmented


def test_swap_targets_are_the_partner_identity_on_this_images_attributes(tmp_path: Path) -> None:
    dm = FaceDataModule(root=str(tmp_path), batch_size=8, swap_targets=True, **SYNTH)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    swaps = dm.render_swaps(batch["identity"], batch["attributes"])
    ids = batch["identity"]
    assert swaps.shape == batch["image"].shape
    # where the partner (image i-1) has the same identity, the swap is image i itself (up to uint8 caching)
    same = ids == ids.roll(1)
    assert same.any() and (~same).any()
    assert (swaps[same] - batch["image"][same]).abs().max() < 0.01
    assert (swaps[~same] - batch["image"][~same]).abs().amax(dim=(1, 2, 3)).min() > 0.1
    with pytest.raises(ValueError, match="swap_targets"):
        FaceDataModule(root=str(tmp_path), swap_targets=True, augment=True, **SYNTH)
