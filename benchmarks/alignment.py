"""ifadit's face crop against FFHQ's on the offline photos: the same landmarks, two implementations.

For every face MTCNN finds in the offline photos (astronaut, Grace Hopper, their 2 x 2 tiling: 6 faces), the
crop ``ifadit align`` and ``ifadit anonymize`` make (``ifadit.photos.align``) and FFHQ's crop made with the
calls of FFHQ's own script (``tests/photos/ffhq_reference.py``: the quad, PIL's QUAD transform at 4x the
size, a Lanczos reduction) from the same 5 landmarks: the mean and 99th-percentile absolute pixel difference
(0-255), and the distance between the eye centres MTCNN finds in the two crops.

Run: ``OMP_NUM_THREADS=1 python benchmarks/alignment.py [--size 256]``. Results: ``results/alignment.md``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from machine import describe  # benchmarks/ is on sys.path when a script runs
from photos import photos

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO / "tests" / "photos"))
    from ffhq_reference import ffhq_reference_crop

    from ifadit.photos.aligner import aligned_crops
    from ifadit.photos.detect import FaceDetector

    detector = FaceDetector(min_face_size=24)
    rows = []
    for name, pixels in photos().items():
        faces = detector.detect(pixels).faces
        for index, (face, ours) in enumerate(
            zip(faces, aligned_crops(pixels, faces, args.size), strict=True)
        ):
            reference = ffhq_reference_crop(pixels, np.array(face.landmarks), args.size)
            difference = np.abs(ours.astype(int) - reference.astype(int))
            found = max(detector.detect(np.ascontiguousarray(ours)).faces, key=lambda f: f.size)
            in_reference = max(detector.detect(reference).faces, key=lambda f: f.size)
            eyes = np.linalg.norm(
                np.array(found.landmarks[:2]) - np.array(in_reference.landmarks[:2]), axis=1
            )
            rows.append(
                f"| {name} #{index} | {face.size:.0f} | {difference.mean():.2f} | "
                f"{np.percentile(difference, 99):.0f} | {eyes[0]:.2f} | {eyes[1]:.2f} |"
            )
    command = " ".join(["python benchmarks/alignment.py", *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join(
        [
            f"# ifadit's crop against FFHQ's at {args.size} px (same landmarks)",
            "",
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {describe(1)}.",
            f"Command: `{command}`",
            "",
            "| face | box px | mean abs diff | p99 abs diff | left eye px | right eye px |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "alignment.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
