"""Face detection over large photos: time, peak memory and faces found against the faces placed.

Each case runs in a fresh process (so its peak RSS is its own) on one CPU thread:

- ``collage-6400``: a 6400 x 4800 flat canvas with 11 faces of 30-200 px cut from the offline test photos
  (the test collage of ``tests/photos/test_photo_coverage.py``);
- ``textured-12000``: a 12000 x 9000 photo textured everywhere (no flat tile to skip: the cost of a real
  108-megapixel photo) with the same faces;
- ``pipeline-12000``: ``ifadit anonymize`` on a 12000 x 9000 JPEG (mostly flat, 3 faces) end to end with
  the tiny test model: reading, detection, alignment, model, paste-back, writing.

Run: ``OMP_NUM_THREADS=1 python benchmarks/photo_coverage.py [--cases collage-6400 textured-12000
pipeline-12000]``. Results: ``results/photo_coverage.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = [30, 34, 38, 41, 50, 64, 80, 100, 128, 160, 200]
CASES = ("collage-6400", "textured-12000", "pipeline-12000")


def _textured(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields plus grain: no flat region anywhere, nothing face-like."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 215, size=(height // 150, width // 150, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    grain = rng.integers(-6, 7, size=(height, width, 1), dtype=np.int16)
    return np.clip(field.astype(np.int16) + grain, 0, 255).astype(np.uint8)


def _matched(found, placed) -> int:
    """Placed faces with a detection whose eyes lie within a quarter eye distance of theirs."""
    hits = 0
    for face in placed:
        tolerance = 0.25 * np.linalg.norm(face.landmarks[1] - face.landmarks[0])
        if any(np.abs(np.asarray(f.landmarks)[:2] - face.landmarks[:2]).max() < tolerance for f in found):
            hits += 1
    return hits


def run_case(name: str) -> dict[str, object]:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO / "tests" / "photos"))
    from collage import collage

    from ifadit.photos.detect import FaceDetector

    if name == "pipeline-12000":
        return _pipeline()
    width, height = (6400, 4800) if name == "collage-6400" else (12000, 9000)
    built = collage(width, height, SIZES, origin=(1000, 1100))
    pixels = built.pixels
    if name == "textured-12000":
        canvas = _textured(width, height)
        placed_area = pixels != 118
        pixels = np.where(placed_area.any(axis=2, keepdims=True), pixels, canvas)
    detector = FaceDetector()
    start = time.perf_counter()
    detection = detector.detect(pixels)
    seconds = time.perf_counter() - start
    found = detection.faces + detection.tiny
    return {
        "case": name,
        "photo": f"{width}x{height}",
        "seconds": round(seconds, 1),
        "tiles": detection.tiles,
        "faces placed": len(built.faces),
        "found of them": _matched(found, built.faces),
        "other detections": len(found) - _matched(found, built.faces),
        "unsure regions": len(detection.unsure),
    }


def _pipeline() -> dict[str, object]:
    from collage import collage
    from PIL import Image

    from ifadit.cli import main
    from ifadit.keys import SecretKey

    work = Path(tempfile.mkdtemp(prefix="ifadit-coverage-"))
    built = collage(12000, 9000, [40, 90, 300], origin=(5990, 4490))
    Image.fromarray(built.pixels).save(work / "phone.jpg", quality=92)
    del built
    SecretKey.generate().save(work / "k.key")
    checkpoint = _tiny_model(work)
    start = time.perf_counter()
    argv = ["anonymize", str(work / "phone.jpg"), "--out", str(work / "out"), "--model", str(checkpoint)]
    code = main([*argv, "--key", str(work / "k.key"), "--no_progress"])
    seconds = time.perf_counter() - start
    return {"case": "pipeline-12000", "photo": "12000x9000", "seconds": round(seconds, 1), "exit": code}


def _tiny_model(work: Path) -> Path:
    """The tests' tiny photo model: ``ifadit fit`` on tests/conf/photo_flow.yaml (2 steps)."""
    from ifadit.cli import main

    cwd = os.getcwd()
    os.chdir(work)
    try:
        args = [
            "fit",
            "--config",
            str(REPO / "tests" / "conf" / "photo_flow.yaml"),
            "--data.root",
            str(work / "synthfaces"),
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(work),
        ]
        assert main(args) == 0
    finally:
        os.chdir(cwd)
    return work / "checkpoints" / "ifadit" / "conf-photo_flow" / "last.ckpt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args()
    if args.case:
        result = run_case(args.case)
        result["peak RSS (GiB)"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print(json.dumps(result))
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for case in args.cases:
        out = subprocess.run(
            [sys.executable, __file__, "--case", case], capture_output=True, text=True, env=env, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    results = REPO / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "photo_coverage.json").write_text(json.dumps(rows, indent=1) + "\n")
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    (results / "photo_coverage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
