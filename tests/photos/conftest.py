"""The model of the photo tests (the photos are in photo_samples.py): one tiny flow-phase model trained
for two steps by ``ifadit fit`` (tests/conf/photo_flow.yaml), so its checkpoint carries its model config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from photo_samples import RECIPE


@dataclass
class TinyModel:
    checkpoint: Path
    work: Path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """``ifadit fit`` on the tiny photo recipe (2 steps, SynthFaces 64 px, no logger)."""
    from ifadit import cli

    work = tmp_path_factory.mktemp("photo_fit")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        args = [
            "fit",
            "--config",
            str(RECIPE),
            "--data.root",
            str(work / "synthfaces"),
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(work),
        ]
        assert cli.main(args) == 0
    checkpoint = work / "checkpoints" / "ifadit" / "conf-photo_flow" / "last.ckpt"
    assert checkpoint.is_file()
    return TinyModel(checkpoint, work)


@pytest.fixture(scope="session")
def anonymizer(tiny_model: TinyModel):
    from ifadit import Anonymizer

    return Anonymizer.from_checkpoint(tiny_model.checkpoint)
