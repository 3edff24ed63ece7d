"""SynthFaces: a sample grid for the docs and the rendering / caching speed.

Renders ``docs/synthfaces_grid.png`` (one identity per row, its images along the row; a copy at twice
the size beside it) and times rendering 10,000 faces at 64 px (the goal: at most 60 s on 2 cores), a full
dataset build (render all splits and write the cache) and a reload from that cache. Results go to
``benchmarks/results/synthfaces.md``.

Then how visible each identity parameter is at the training size: the mean absolute pixel change (grey
levels) when one parameter moves from the low to the high end of its range, the rest of the face and the
picture unchanged, next to the change between two identities in the same picture and between two pictures
of one identity. A recognizer can only spread identities over the directions that change pixels.
Run: ``python benchmarks/synthfaces.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/ is on sys.path when a script runs
from torchvision.utils import save_image

from ifadit.data.synthfaces import (
    SPLITS,
    SynthFaces,
    identity_param_array,
    nuisance_param_array,
    render_faces,
)
from ifadit.data.synthfaces_params import IDENTITY_NAMES, identity_ranges

GOAL_SECONDS = 60.0


def render_grid(path: Path, identities: int, images: int, size: int, seed: int) -> None:
    ident = np.repeat(identity_param_array(seed, range(identities)), images, axis=0)
    nuis = np.concatenate([nuisance_param_array(seed, i, images) for i in range(identities)])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(
        render_faces(ident, nuis, size), path, nrow=images, normalize=True, value_range=(-1, 1), padding=2
    )


def time_render(count: int, size: int, threads: int, seed: int) -> float:
    """Seconds to draw the parameters of ``count`` faces (10 per identity) and render them."""
    torch.set_num_threads(threads)
    render_faces(
        identity_param_array(seed, [0]).repeat(64, 0), nuisance_param_array(seed, 0, 64), size
    )  # warm-up
    start = time.perf_counter()
    per = 10
    ids = range(count // per)
    ident = np.repeat(identity_param_array(seed, ids), per, axis=0)
    nuis = np.concatenate([nuisance_param_array(seed, i, per) for i in ids])
    render_faces(ident, nuis, size)
    return time.perf_counter() - start


def time_dataset(count: int, size: int, threads: int, seed: int) -> tuple[float, float, int]:
    """Seconds to build every split (render + write the cache) and to load them back; cache bytes."""
    torch.set_num_threads(threads)
    kwargs = {"size": size, "num_identities": count // 10, "images_per_identity": 10, "seed": seed}
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        built = [SynthFaces(root, split, **kwargs) for split in SPLITS]
        build = time.perf_counter() - start
        start = time.perf_counter()
        loaded = [SynthFaces(root, split, **kwargs) for split in SPLITS]
        load = time.perf_counter() - start
        assert all(torch.equal(a.images, b.images) for a, b in zip(built, loaded, strict=True))
        nbytes = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
    return build, load, nbytes


def visibility(faces: int, size: int, seed: int) -> tuple[float, float, list[tuple[str, float]]]:
    """Grey levels: two identities in one picture, two pictures of one identity, and per identity parameter
    (most visible first) the change when it moves across its range, over ``faces`` identities."""
    ident = identity_param_array(seed, range(faces))
    nuisance = np.concatenate([nuisance_param_array(seed, i, 2) for i in range(faces)])
    picture, second = nuisance[0::2], nuisance[1::2]

    def grey(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a - b).abs().mean().item() * 127.5

    base = render_faces(ident, picture, size)
    between = grey(base, render_faces(np.roll(ident, 1, axis=0), picture, size))
    within = grey(base, render_faces(ident, second, size))
    lows, highs = identity_ranges()
    per_parameter = []
    for k, name in enumerate(IDENTITY_NAMES):
        low, high = ident.copy(), ident.copy()
        low[:, k], high[:, k] = lows[k], highs[k]
        change = grey(render_faces(low, picture, size), render_faces(high, picture, size))
        per_parameter.append((name, change))
    return between, within, sorted(per_parameter, key=lambda row: -row[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=Path("docs/synthfaces_grid.png"))
    parser.add_argument("--grid_size", type=int, default=64)
    parser.add_argument("--visibility_faces", type=int, default=128, help="identities for the table; 0: none")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synthfaces.md"))
    args = parser.parse_args()

    # The grid at the training size, and a larger copy where the details can be seen.
    large = args.grid.with_name(f"{args.grid.stem}_{2 * args.grid_size}{args.grid.suffix}")
    render_grid(args.grid, identities=8, images=8, size=args.grid_size, seed=args.seed)
    render_grid(large, identities=8, images=8, size=2 * args.grid_size, seed=args.seed)
    print(f"grids: {args.grid}, {large}")
    rows = []
    for threads in sorted({1, args.threads}):
        seconds = time_render(args.count, args.size, threads, args.seed)
        verdict = "yes" if seconds <= GOAL_SECONDS else "no"
        rows.append(f"| render {args.count:,} faces | {threads} | {seconds:.1f} | {verdict} |")
        print(f"render {args.count} faces at {args.size}px, {threads} thread(s): {seconds:.1f} s")
    for threads in sorted({1, args.threads}):
        build, load, nbytes = time_dataset(args.count, args.size, threads, args.seed)
        print(f"dataset, {threads} thread(s): build all splits {build:.1f} s; reload {load:.2f} s")
        rows.append(f"| build all splits (render + write cache) | {threads} | {build:.1f} | – |")
        rows.append(f"| reload all splits from cache | {threads} | {load:.2f} | – |")

    seen = []
    if args.visibility_faces:
        between, within, per_parameter = visibility(args.visibility_faces, args.size, args.seed)
        visible = sum(change >= 1.0 for _, change in per_parameter)
        seen = [
            f"Visibility at {args.size} px ({args.visibility_faces} identities, mean |change| in grey "
            "levels): "
            f"two identities in one picture {between:.1f}, two pictures of one identity {within:.1f}; "
            f"{visible} of {len(per_parameter)} identity parameters change the picture by ≥ 1 grey level "
            "across their range.",
            "",
            "| identity parameter, low → high | grey levels |",
            "|---|---:|",
            *[f"| {name} | {change:.2f} |" for name, change in per_parameter],
            "",
        ]
    load_avg = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            f"SynthFaces — {stamp} — {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"CPython {platform.python_version()}",
            f"({args.count:,} faces at {args.size}×{args.size}, 10 per identity, full nuisance; one run each "
            f"after a warm-up; load average at the end {load_avg}; shared machine, times vary with load)",
            "",
            f"| what | threads | seconds | ≤ {GOAL_SECONDS:.0f} s |",
            "|---|---:|---:|:---:|",
            *rows,
            "",
            f"Cache on disk: {nbytes / 2**20:.1f} MiB (uint8 images + labels + attributes + manifests).",
            f"Sample grids: `{args.grid}` (8 identities × 8 images, {args.grid_size} px, seed {args.seed}; "
            f"one identity per row) and `{large}` (the same faces at {2 * args.grid_size} px).",
            "",
            *seen,
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
