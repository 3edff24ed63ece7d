"""Blending before recovery: the face-region PSNR of recover(anonymize(x)) with and without the paper's blend.

The official iFADIT pipeline pastes each generated face into its input under the face mask, eroded and
Gaussian-blurred (``ifadit.photos.blend``), and recovers from that blend; the recovered face is pasted back
the same way. Without blending, the generated crop itself is what recovery reads. For every aligned face
crop ``x`` and key:

* without: ``a = G(x)``, ``r = recover(a)``;
* with: ``a = blend(G(x), x, m)``, ``r = blend(recover(a), a, m)``, ``m`` the softened face mask;

and the PSNR of ``a`` and of ``r`` (right key, and a wrong key) against ``x`` over the face region (the
landmark ellipse, before erosion). Faces: the offline real photos (astronaut, Grace Hopper, their 2 x 2
tiling; 6 faces, FFHQ-aligned from MTCNN landmarks) and SynthFaces test faces where MTCNN finds one (on a
256 px copy). Mean over ``--keys`` random keys.

Run: ``OMP_NUM_THREADS=1 python benchmarks/blending.py --ckpt_path CKPT [--recipe RECIPE] [--keys 8]``.
Results: ``results/blending.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from machine import describe  # benchmarks/ is on sys.path when a script runs
from photos import photos

REPO = Path(__file__).resolve().parents[1]


def photo_faces(anonymizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned crops (N, 3, S, S) of every face of the offline photos and their landmarks in crop pixels."""
    from ifadit.photos.align import apply_affine

    crops, landmarks = [], []
    for pixels in photos().values():
        prepared = anonymizer.prepare(pixels)
        points = torch.tensor([f.landmarks for f in prepared.faces], dtype=torch.float32)
        crops.append(prepared.crops)
        landmarks.append(apply_affine(prepared.matrices, points))
    return torch.cat(crops), torch.cat(landmarks)


def synthfaces_faces(recipe: Path, data_root: str | None, limit: int, detector: Any) -> tuple[Any, Any]:
    """SynthFaces test faces of ``recipe``'s data settings where MTCNN finds a face on a 256 px copy, with
    their landmarks in the faces' own pixels."""
    import yaml

    from ifadit.data.synthfaces import SynthFaces

    data = yaml.safe_load(recipe.read_text(encoding="utf-8")).get("data", {})
    size = int(data.get("size", 64))
    dataset = SynthFaces(
        data_root or data.get("root", "data/synthfaces"),
        "test",
        size,
        int(data.get("num_identities", 1000)),
        int(data.get("images_per_identity", 10)),
        int(data.get("seed", 0)),
        tuple(data.get("split_fractions", (0.8, 0.1, 0.1))),
    )
    crops, landmarks = [], []
    step = max(len(dataset) // limit, 1)
    for index in range(0, len(dataset), step):
        image = dataset[index]["image"]
        up = F.interpolate(image[None], size=256, mode="bicubic", align_corners=False).clamp(-1, 1)
        pixels = ((up[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        faces = detector.detect(pixels).faces
        if faces:
            face = max(faces, key=lambda f: f.size)
            scale = size / 256
            points = (torch.tensor(face.landmarks) + 0.5) * scale - 0.5
            crops.append(image)
            landmarks.append(points)
        if len(crops) >= limit:
            break
    return torch.stack(crops), torch.stack(landmarks)


@torch.no_grad()
def measure(model: Any, crops: torch.Tensor, landmarks: torch.Tensor, keys: int) -> dict[str, float]:
    """Mean face-region PSNRs over ``keys`` random keys (a wrong key drawn with each)."""
    from ifadit.keys import SecretKey
    from ifadit.photos.align import ellipse_masks
    from ifadit.photos.blend import blend, masked_psnr, paste_masks

    size = crops.shape[-1]
    region = ellipse_masks(landmarks, size)
    soft = paste_masks(crops, landmarks)
    values: dict[str, list[float]] = {}

    def add(name: str, image: torch.Tensor) -> None:
        values.setdefault(name, []).extend(masked_psnr(image.clamp(-1, 1), crops, region).tolist())

    for _ in range(keys):
        secret, wrong = SecretKey.generate(), SecretKey.generate()
        cond = model.key_scheme(secret, batch_size=len(crops))
        cond_wrong = model.key_scheme(wrong, batch_size=len(crops))
        generated = model.anonymize(crops, cond).image.clamp(-1, 1)
        # without blending: recovery reads the generated crop
        add("anonymized (no blend)", generated)
        add("recovered (no blend)", model.recover(generated, cond).image)
        add("wrong key (no blend)", model.recover(generated, cond_wrong).image)
        # with the paper's blend, before recovery and for the pasted recovery
        blended = blend(generated, crops, soft)
        add("anonymized (blend)", blended)
        add("recovered (blend)", blend(model.recover(blended, cond).image.clamp(-1, 1), blended, soft))
        add("wrong key (blend)", blend(model.recover(blended, cond_wrong).image.clamp(-1, 1), blended, soft))
    return {name: statistics.fmean(v) for name, v in values.items()}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Blending before recovery: face-region PSNR (dB) against the original crop",
        "",
        f"{result['date']}; {result['machine']}; checkpoint `{result['checkpoint']}` "
        f"(sha256 {result['sha256'][:12]}), {result['resolution']} px; mean over {result['keys']} keys.",
        f"Command: `{result['command']}`",
        "",
        "| faces | n | blend | anonymized | recovered, right key | recovered, wrong key | right - wrong |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, row in result["sets"].items():
        for mode, tag in (("without", "no blend"), ("with", "blend")):
            right, wrong = row[f"recovered ({tag})"], row[f"wrong key ({tag})"]
            lines.append(
                f"| {name} | {row['n']} | {mode} | {row[f'anonymized ({tag})']:.2f} | {right:.2f} "
                f"| {wrong:.2f} | {right - wrong:+.2f} |"
            )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="a flow-phase checkpoint written by 'ifadit fit'")
    parser.add_argument("--config", help="its recipe, for a checkpoint that carries no model config")
    parser.add_argument("--recipe", help="the recipe whose SynthFaces test split to use (none: photos only)")
    parser.add_argument("--data_root", help="override the recipe's data.root")
    parser.add_argument("--synthfaces", type=int, default=64, help="SynthFaces test faces to use")
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from ifadit.api import Anonymizer

    anonymizer = Anonymizer.from_checkpoint(args.ckpt_path, config=args.config)
    model = anonymizer.model
    sets = {"real photos": photo_faces(anonymizer)}
    if args.recipe:
        sets["SynthFaces test"] = synthfaces_faces(
            Path(args.recipe), args.data_root, args.synthfaces, anonymizer.detector
        )
    result = {
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "machine": describe(args.threads),
        "checkpoint": args.ckpt_path,
        "sha256": anonymizer.model_sha256 or "",
        "resolution": anonymizer.resolution,
        "keys": args.keys,
        "command": "python benchmarks/blending.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sets": {
            name: {"n": len(crops), **measure(model, crops, landmarks, args.keys)}
            for name, (crops, landmarks) in sets.items()
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "blending.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "blending.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
