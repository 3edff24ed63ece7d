"""``benchmarks/gpu.py``, the prepared GPU script, run on the CPU with ``--steps 1`` (tiny components): both
ffhq256 phases train a step through ``ifadit fit``'s LightningCLI and the anonymize throughput is measured at
1, 8 and 32 faces per call; the tables are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two one-step fits and the throughput runs in a fresh interpreter: ~20 CPU-s
def test_gpu_script_runs_one_step_of_each_phase_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu.py"),
            "--steps",
            "1",
            "--faces",
            "32",
            "--data_root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "results"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "gpu_cpu.json").read_text())
    assert result["tiny"] and result["precision"] == "32-true"
    assert set(result["phases"]) == {"disentangle", "flow"}
    for row in result["phases"].values():
        assert "error" not in row and row["steps"] == 1 and row["median_step_s"] > 0
    assert [(r["mode"], r["batch_size"]) for r in result["anonymize"]] == [
        ("float32", 1),
        ("float32", 8),
        ("float32", 32),
    ]
    assert all(r["faces_per_s"] > 0 for r in result["anonymize"])
    table = (tmp_path / "results" / "gpu_cpu.md").read_text()
    assert "| disentangle |" in table and "| flow |" in table and "| float32 | 32 |" in table
