"""SynthFaces: seeded determinism, identity-disjoint splits, the disk cache and identity signal in pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ifadit.data.synthfaces as synthfaces
import ifadit.data.synthfaces_params as synthfaces_params
from ifadit.data.synthfaces import (
    IDENTITY_NAMES,
    NUISANCE_NAMES,
    IdentityParams,
    SynthFaces,
    identity_param_array,
    nuisance_param_array,
    render_faces,
    render_identity,
    split_identities,
)

SMALL = {"size": 32, "num_identities": 20, "images_per_identity": 4}


def test_seed_streams_are_pinned() -> None:
    # numpy promises PCG64 + SeedSequence output never changes; this catches it if it ever does.
    bits = np.random.PCG64(np.random.SeedSequence([0, 1, 0])).random_raw(3)
    assert bits.tolist() == [16412783775159424549, 10277383025879800780, 14774146505460541886]
    first = synthfaces_params._raw_uniforms([0, 1, 0], 1)[0]
    assert first == pytest.approx(16412783775159424549 / 2**64, abs=1e-15)


def test_identity_params_are_deterministic_distinct_and_in_range() -> None:
    params = IdentityParams.sample(0, 5)
    assert params == IdentityParams.sample(0, 5)
    assert params != IdentityParams.sample(1, 5)
    assert params != IdentityParams.sample(0, 6)
    assert len(IDENTITY_NAMES) >= 10
    table = identity_param_array(0, range(200))
    assert np.array_equal(table[5], params.as_array())
    lows = np.array([lo for lo, _ in synthfaces_params._IDENTITY_RANGES.values()])
    highs = np.array([hi for _, hi in synthfaces_params._IDENTITY_RANGES.values()])
    assert (table >= lows).all() and (table <= highs).all()
    # Every parameter really varies between identities (spread over most of its range).
    spread = (table.max(0) - table.min(0)) / (highs - lows)
    assert spread.min() > 0.8


def test_nuisance_rows_do_not_depend_on_image_count() -> None:
    many = nuisance_param_array(3, 7, 10)
    assert many.shape == (10, len(NUISANCE_NAMES))
    assert np.array_equal(nuisance_param_array(3, 7, 4), many[:4])
    assert not np.array_equal(nuisance_param_array(3, 8, 4), many[:4])


def test_zero_nuisance_gives_identical_pictures_and_full_nuisance_varies_them() -> None:
    still = render_identity(0, 2, 3, size=32, strength=0.0)
    assert torch.equal(still[0], still[1]) and torch.equal(still[1], still[2])
    varied = render_identity(0, 2, 3, size=32, strength=1.0)
    assert (varied[0] - varied[1]).abs().mean() > 0.05


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_render_shape_and_range(size: int) -> None:
    images = render_identity(0, 1, 2, size=size)
    assert images.shape == (2, 3, size, size) and images.dtype == torch.float32
    assert torch.isfinite(images).all()
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.std() > 0.2  # a picture, not a flat colour


def test_render_geometry_does_not_depend_on_resolution() -> None:
    large = render_identity(0, 4, 2, size=256)
    small = render_identity(0, 4, 2, size=64)
    assert (F.avg_pool2d(large, 4) - small).abs().mean() < 0.04


def test_parallel_chunks_render_the_same_pixels_and_restore_threads() -> None:
    ident = np.repeat(identity_param_array(0, [0, 1, 2]), 4, axis=0)
    nuis = np.concatenate([nuisance_param_array(0, i, 4) for i in range(3)])
    serial = render_faces(ident, nuis, size=32, chunk=1, workers=1)
    parallel = render_faces(ident, nuis, size=32, chunk=1, workers=3)
    assert torch.equal(serial, parallel)
    assert torch.get_num_threads() == 1  # conftest's setting, put back after rendering


def test_render_rejects_mismatched_batches() -> None:
    with pytest.raises(ValueError, match="differ"):
        render_faces(identity_param_array(0, [0, 1]), nuisance_param_array(0, 0, 1))
    with pytest.raises(ValueError, match="size"):
        render_faces(identity_param_array(0, [0]), nuisance_param_array(0, 0, 1), size=8)


def test_same_seed_same_pixels_different_seed_different(tmp_path: Path) -> None:
    first = SynthFaces(tmp_path / "a", "val", seed=0, **SMALL)
    again = SynthFaces(tmp_path / "b", "val", seed=0, **SMALL)
    other = SynthFaces(tmp_path / "c", "val", seed=1, **SMALL)
    assert torch.equal(first.images, again.images)
    assert torch.equal(first.identity_labels, again.identity_labels)
    assert first.images.shape != other.images.shape or not torch.equal(first.images, other.images)


def test_splits_hold_disjoint_identities(tmp_path: Path) -> None:
    splits = {s: SynthFaces(tmp_path, s, **SMALL) for s in ("train", "val", "test")}
    ids = {s: set(d.identity_labels.tolist()) for s, d in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] == set(range(20))
    assert [len(ids[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    assert len(splits["train"]) == 16 * 4
    assert splits["train"].num_classes == 20
    with pytest.raises(ValueError, match="split_fractions"):
        split_identities(10, 0, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="split"):
        SynthFaces(tmp_path, "holdout", **SMALL)


def test_items_are_images_in_range_with_labels(tmp_path: Path) -> None:
    dataset = SynthFaces(tmp_path, "test", **SMALL)
    item = dataset[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1.0 and item["image"].max() <= 1.0
    assert isinstance(item["identity"], int) and item["identity"] in dataset.identities
    assert item["attributes"].shape == (len(NUISANCE_NAMES),) and item["attributes"].dtype == torch.float32
    # The cached uint8 picture is the rendering, to within quantisation.
    rendered = render_identity(0, item["identity"], 4, size=32)[3]
    assert (item["image"] - rendered).abs().max() <= 1.0 / 127.5 + 1e-6


def test_items_carry_every_parameter_they_were_rendered_from_in_minus_one_to_one(tmp_path: Path) -> None:
    dataset = SynthFaces(tmp_path, "train", **SMALL)
    params = torch.stack([dataset[i]["parameters"] for i in range(len(dataset))])
    assert params.shape == (len(dataset), len(IDENTITY_NAMES) + len(NUISANCE_NAMES))
    assert params.min() >= -1.0 and params.max() <= 1.0 and params.min() < -0.9 and params.max() > 0.9
    labels = torch.tensor([dataset[i]["identity"] for i in range(len(dataset))])
    identity_part = params[:, : len(IDENTITY_NAMES)]
    for label in labels.unique():
        rows = identity_part[labels == label]
        assert torch.equal(rows, rows[:1].expand_as(rows))  # one identity, one set of identity parameters
    assert not torch.equal(identity_part[labels == labels[0]][0], identity_part[labels != labels[0]][0])
    # the nuisance part is the item's attributes, rescaled
    signed = torch.tensor([kind == "signed" for _, kind in synthfaces_params._NUISANCE_SPEC.values()])
    attributes = torch.stack([dataset[i]["attributes"] for i in range(len(dataset))])
    expected = torch.where(signed, attributes, attributes * 2 - 1)
    assert torch.allclose(params[:, len(IDENTITY_NAMES) :], expected, atol=1e-6)


def test_cache_is_reused_without_rendering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = SynthFaces(tmp_path, "train", **SMALL)
    images_file = first.cache_dir / "train-images.npy"
    stamp = images_file.stat().st_mtime_ns

    def must_not_render(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendered although a valid cache exists")

    monkeypatch.setattr(synthfaces, "render_faces", must_not_render)
    second = SynthFaces(tmp_path, "train", **SMALL)
    assert torch.equal(first.images, second.images)
    assert images_file.stat().st_mtime_ns == stamp
    assert not list(first.cache_dir.glob(".*"))  # no temporary files left behind


def test_cache_is_rebuilt_when_parameters_or_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_render = synthfaces.render_faces

    def counting_render(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthfaces, "render_faces", counting_render)
    base = SynthFaces(tmp_path, "val", **SMALL)
    assert len(calls) == 1
    SynthFaces(tmp_path, "val", **SMALL)
    assert len(calls) == 1
    changed = SynthFaces(tmp_path, "val", nuisance=0.5, **SMALL)
    assert len(calls) == 2 and changed.cache_dir != base.cache_dir
    bigger = SynthFaces(tmp_path, "val", **{**SMALL, "images_per_identity": 5})
    assert len(calls) == 3 and len(bigger) == 2 * 5

    # A manifest that no longer matches (edited, or from another renderer version) forces a new render.
    manifest = base.cache_dir / "val.json"
    stale = json.loads(manifest.read_text())
    stale["renderer_version"] = -1
    manifest.write_text(json.dumps(stale))
    again = SynthFaces(tmp_path, "val", **SMALL)
    assert len(calls) == 4 and torch.equal(again.images, base.images)
    assert json.loads(manifest.read_text())["renderer_version"] == synthfaces.RENDERER_VERSION

    # So does a damaged array.
    (base.cache_dir / "val-images.npy").write_bytes(b"not an array")
    SynthFaces(tmp_path, "val", **SMALL)
    assert len(calls) == 5


def test_identity_is_recoverable_from_pixels() -> None:
    # Nearest identity centroid on 8x8 thumbnails, under moderate nuisance: six times chance (1/20) or more.
    num_ids, per = 20, 4
    ident = np.repeat(identity_param_array(0, range(num_ids)), per, axis=0)
    nuis = np.concatenate([nuisance_param_array(0, i, per, strength=0.3) for i in range(num_ids)])
    thumbs = F.avg_pool2d(render_faces(ident, nuis, size=32), 4).reshape(num_ids, per, -1)
    centroids = thumbs[:, :2].mean(1)
    queries = thumbs[:, 2:].reshape(-1, centroids.shape[1])
    predicted = torch.cdist(queries, centroids).argmin(1)
    accuracy = (predicted == torch.arange(num_ids).repeat_interleave(2)).float().mean().item()
    assert accuracy >= 0.3
