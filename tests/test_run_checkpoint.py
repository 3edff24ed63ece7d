"""last.ckpt follows the run even when the monitored score stops improving."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from ifadit.lightning_cli import RunCheckpoint


class _WorseEveryValidation(BoringModel):
    """val/score rises at every validation: only the first one is ever the best."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("val/score", torch.tensor(float(self.global_step)))


def test_last_checkpoint_is_the_final_step_when_the_score_gets_worse(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    checkpoint = RunCheckpoint(dirpath=tmp_path, monitor="val/score", mode="min", save_last=True,
                               filename="best-{step}")
    trainer = L.Trainer(max_steps=9, val_check_interval=3, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoint],
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(_WorseEveryValidation())
    assert sorted(p.name for p in tmp_path.glob("best-*.ckpt")) == ["best-step=3.ckpt"]
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == 9
