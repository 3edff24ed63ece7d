"""Distributed sync: two real gloo processes each update half of the data; ``compute()`` on either rank
gives the numbers one process gets from all of it (sum, max and cat states alike)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ifadit.metrics import (
    Detections,
    DetectionUtility,
    IdentityRetrieval,
    IdentitySimilarity,
    KeyIndistinguishability,
    LatentRoundTripError,
    PairwiseIdentityDiversity,
)

N = 10


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "ref": torch.randn(N, 4, generator=g),
        "probe": torch.randn(N, 4, generator=g),
        "found": torch.rand(N, generator=g) > 0.2,
        "labels": torch.arange(N) // 2,
        "z": torch.randn(N, 4, generator=g),
        "z_back": torch.randn(N, 4, generator=g) * 1e-3,
        "correct": torch.randn(N, generator=g) * 100,
        "wrong": torch.randn(N, generator=g) * 100 - 50,
        "group": torch.randn(N, 3, 4, generator=g),
        "boxes": torch.rand(N, 4, generator=g) * 10 + torch.tensor([0.0, 0.0, 10.0, 10.0]),
        "points": torch.rand(N, 5, 2, generator=g) * 20,
    }


def _metrics() -> dict[str, object]:
    return {
        "similarity": IdentitySimilarity(0.1),
        "retrieval": IdentityRetrieval(0.1),
        "latent": LatentRoundTripError(),
        "auc": KeyIndistinguishability(),
        "diversity": PairwiseIdentityDiversity(0.1),
        "utility": DetectionUtility(),
    }


def _feed(metrics: dict, d: dict, part: slice) -> None:
    metrics["similarity"].update(d["ref"][part], d["probe"][part], d["found"][part], None)
    metrics["retrieval"].update(d["probe"][part], d["ref"][part], d["labels"][part], d["found"][part])
    metrics["latent"].update(d["z"][part], d["z"][part] + d["z_back"][part])
    metrics["auc"].update(d["correct"][part], d["wrong"][part])
    metrics["diversity"].update(d["group"][part])
    ref = Detections(d["found"][part], d["boxes"][part], d["points"][part])
    probe = Detections(torch.ones_like(d["found"][part]), d["boxes"][part] + 1, d["points"][part] + 1)
    metrics["utility"].update(ref, probe)


def _flat(metrics: dict) -> dict[str, float]:
    out = {}
    for name, metric in metrics.items():
        for key, value in metric.compute().items():
            out[f"{name}/{key}"] = float(value)
    return out


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        d, metrics = _data(), _metrics()
        half = N // world
        _feed(metrics, d, slice(rank * half, (rank + 1) * half))
        torch.save(_flat(metrics), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # one more interpreter importing torch and torchmetrics: ~10 s on a loaded machine
def test_two_processes_sync_to_the_single_process_result(tmp_path: Path) -> None:
    single = _metrics()
    _feed(single, _data(), slice(0, N))
    expected = _flat(single)
    out, init = str(tmp_path / "result"), f"file://{tmp_path / 'rendezvous'}"
    # rank 1 in a fresh process, rank 0 here (one interpreter start instead of two)
    other = mp.get_context("spawn").Process(target=_worker, args=(1, 2, init, out))
    other.start()
    try:
        _worker(0, 2, init, out)
    finally:
        other.join(timeout=120)
    assert other.exitcode == 0
    assert not dist.is_initialized()
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert set(got) == set(expected)
        for key, value in expected.items():
            if math.isnan(value):
                assert math.isnan(got[key]), key
            else:
                assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (rank, key)
