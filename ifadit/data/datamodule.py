"""FaceDataModule: SynthFaces or a folder of aligned face photos, in [-1, 1], with GPU-side augmentation.

Augmentation runs in ``on_after_batch_transfer`` on whole batches (kornia), so it costs no worker time and
runs on the accelerator; it is applied to training batches only, never to validation, test or predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import kornia.augmentation as K
import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ifadit.data.synthfaces import SPLITS, SynthFaces, identity_param_array, render_faces, split_identities

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _looks_like_ffhq_chunks(names: Sequence[str]) -> bool:
    """FFHQ stores its images in numbered chunk folders (00000, 01000, …): these are not identities."""
    return (
        all(name.isdigit() and int(name) % 1000 == 0 for name in names) and len({len(n) for n in names}) == 1
    )


def _image_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"face folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return files


def _has_identity_layout(trees: dict[Path, list[Path]]) -> bool:
    """Every image exactly one folder down, more than one folder in all, and not FFHQ's numbered chunks."""
    folders = set()
    for root, files in trees.items():
        for path in files:
            parts = path.relative_to(root).parts
            if len(parts) != 2:
                return False
            folders.add(parts[0])
    return len(folders) > 1 and not _looks_like_ffhq_chunks(sorted(folders))


def scan_face_folders(
    roots: Sequence[str | Path], identities: bool | None = None
) -> list[tuple[list[Path], list[str] | None]]:
    """Image files under each root (sorted) and, where the layout gives them, the identity folder of each.

    ``identities=None`` reads identities from immediate sub-folders (``root/<identity>/*.png``) when every
    image of every root sits exactly one level down, in more than one folder overall, and the folders are
    not FFHQ's numbered chunks; ``True``/``False`` force the choice.
    """
    trees = {Path(root): _image_files(Path(root)) for root in roots}
    if identities is None:
        identities = _has_identity_layout(trees)
    if not identities:
        return [(files, None) for files in trees.values()]
    scanned = []
    for root, files in trees.items():
        parts = [path.relative_to(root).parts for path in files]
        if any(len(p) != 2 for p in parts):
            raise ValueError(f"identity labels need every image in {root}/<identity>/; some are elsewhere")
        scanned.append((files, [p[0] for p in parts]))
    return scanned


def scan_face_folder(root: str | Path, identities: bool | None = None) -> tuple[list[Path], list[str] | None]:
    """``scan_face_folders`` for one root."""
    return scan_face_folders([root], identities)[0]


def load_face(path: str | Path, size: int) -> Tensor:
    """An image file as a (3, size, size) float tensor in [-1, 1]: centre-cropped to square, then resized."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        side = min(width, height)
        if width != height:
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        if side != size:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image).copy())
    return pixels.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class FaceFolder(Dataset):
    """Aligned face images read with PIL; ``identity`` is -1 where the folder layout gives none."""

    def __init__(
        self, files: Sequence[str | Path], identities: Sequence[int] | None = None, size: int = 64
    ) -> None:
        if identities is not None and len(identities) != len(files):
            raise ValueError("one identity per file expected")
        self.files = [Path(f) for f in files]
        self.identities = list(identities) if identities is not None else [-1] * len(self.files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": load_face(self.files[index], self.size),
            "identity": self.identities[index],
            "attributes": torch.zeros(0),
            "path": str(self.files[index]),
        }


def default_augmentation() -> nn.Module:
    """Small, identity-preserving changes: a mirror, a slight similarity warp and a colour jitter."""
    return nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(degrees=6.0, translate=(0.04, 0.04), scale=(0.94, 1.06), padding_mode="border", p=0.8),
        K.ColorJitter(brightness=0.12, contrast=0.12, saturation=0.12, hue=0.02, p=0.8),
    )


class FaceDataModule(L.LightningDataModule):
    """Face images for every phase, from ``source="synthfaces"`` (rendered, with identities) or ``"folder"``.

    SynthFaces arguments: ``num_identities``, ``images_per_identity``, ``seed``, ``split_fractions``,
    ``nuisance``; its cache lives under ``root``. Folder source: ``root`` holds aligned faces, either in
    ``train/``, ``val/``, ``test/`` sub-folders or in one tree that is split here by ``split_fractions``
    (identity-disjoint when identities are known, see ``scan_face_folder``).
    """

    def __init__(
        self,
        source: Literal["synthfaces", "folder"] = "synthfaces",
        root: str = "data/synthfaces",
        size: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        augment: bool = False,
        swap_targets: bool = False,
        num_identities: int = 1000,
        images_per_identity: int = 10,
        seed: int = 0,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        nuisance: float = 1.0,
        identities: bool | None = None,
        predict_split: Literal["train", "val", "test"] = "test",
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # logged with the run, so a result names the data it came from
        if source not in ("synthfaces", "folder"):
            raise ValueError(f"source must be 'synthfaces' or 'folder', got {source!r}")
        if predict_split not in SPLITS:
            raise ValueError(f"predict_split must be one of {SPLITS}")
        self.source, self.root, self.size = source, root, size
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.augment = augment
        if swap_targets and (source != "synthfaces" or augment):
            raise ValueError("swap_targets needs source='synthfaces' and augment off (unaugmented targets)")
        self.swap_targets = swap_targets
        self.num_identities, self.images_per_identity = num_identities, images_per_identity
        self.seed, self.split_fractions, self.nuisance = seed, tuple(split_fractions), nuisance
        self.identities, self.predict_split = identities, predict_split
        self.augmentation = default_augmentation() if augment else None
        self.datasets: dict[str, Dataset] = {}
        self.identity_names: list[str] = []

    # -- data ------------------------------------------------------------------------------------------

    def _synthfaces(self, split: str) -> SynthFaces:
        return SynthFaces(
            self.root,
            split,
            self.size,
            self.num_identities,
            self.images_per_identity,
            self.seed,
            self.split_fractions,
            self.nuisance,
        )

    def _folder_splits(self) -> dict[str, FaceFolder]:
        root = Path(self.root)
        if (root / "train").is_dir():
            present = [split for split in SPLITS if (root / split).is_dir()]
            found = scan_face_folders([root / split for split in present], self.identities)
            scanned = dict(zip(present, found, strict=True))
            names = sorted({n for _, labels in scanned.values() for n in (labels or [])})
            index = {name: i for i, name in enumerate(names)}
            self.identity_names = names
            return {
                split: FaceFolder(files, [index[n] for n in labels] if labels else None, self.size)
                for split, (files, labels) in scanned.items()
            }
        files, labels = scan_face_folder(root, self.identities)
        if labels is None:
            parts = split_identities(len(files), self.seed, self.split_fractions)
            return {
                split: FaceFolder([files[i] for i in chosen], None, self.size)
                for split, chosen in parts.items()
            }
        self.identity_names = sorted(set(labels))
        index = {name: i for i, name in enumerate(self.identity_names)}
        label_ids = np.array([index[n] for n in labels])
        parts = split_identities(len(self.identity_names), self.seed, self.split_fractions)
        datasets = {}
        for split, chosen in parts.items():
            keep = np.flatnonzero(np.isin(label_ids, chosen))
            datasets[split] = FaceFolder([files[i] for i in keep], label_ids[keep].tolist(), self.size)
        return datasets

    @property
    def num_classes(self) -> int:
        """Outputs a classifier over identity ids needs (0 when the folder has no identities)."""
        if self.source == "synthfaces":
            return self.num_identities
        if not self.datasets:
            self.setup()
        return len(self.identity_names)

    def prepare_data(self) -> None:
        # Rendering happens once, on one process; setup() then loads the cache on every process.
        if self.source == "synthfaces":
            for split in SPLITS:
                self._synthfaces(split)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.source == "synthfaces":
            self.datasets = {split: self._synthfaces(split) for split in SPLITS}
        else:
            self.datasets = self._folder_splits()

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if not self.datasets:
            self.setup()
        if split not in self.datasets:
            raise ValueError(f"no {split} images under {self.root}")
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            # A last batch of one breaks batch statistics (BatchNorm) in training; evaluation keeps them all.
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split)

    # -- augmentation ----------------------------------------------------------------------------------

    def augment_images(self, images: Tensor) -> Tensor:
        """Apply the training augmentation to a batch in [-1, 1] (kornia works in [0, 1])."""
        if self.augmentation is None:
            return images
        self.augmentation.to(images.device)
        return self.augmentation((images + 1.0) * 0.5).clamp(0.0, 1.0) * 2.0 - 1.0

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.augmentation is not None and self.trainer is not None and self.trainer.training:
            batch = {**batch, "image": self.augment_images(batch["image"])}
        if self.swap_targets and self.trainer is not None and self.trainer.training:
            batch = {**batch, "swap_image": self.render_swaps(batch["identity"], batch["attributes"])}
        return batch

    def render_swaps(self, identities: Tensor, attributes: Tensor) -> Tensor:
        """Ground truth for an identity swap: image i's pose, light, hair… with the identity of image i-1
        (``roll(1)`` over the batch). Only a renderer can give it; phase 1 then learns the swap in pixels."""
        partners = identities.roll(1, dims=0).cpu().numpy()
        params = identity_param_array(self.seed, partners)
        return render_faces(params, attributes.cpu(), self.size).to(attributes.device)
