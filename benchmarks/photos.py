"""Real photos through ``ifadit.Anonymizer`` on the CPU: speed per stage, and recovery quality.

Speed (default): photos per second for ``anonymize`` with a 256 px model of random weights (the paper's
architecture from ``recipes/ffhq256/flow.yaml``: ArcFace IR-SE50, pSp, StyleGAN2-256 cm=2, 4-block flow; or
``--encoders timm``: timm ResNet-18 encoders with the same generator), on the offline photos (astronaut, Grace
Hopper, their 2 x 2 tiling: 6 faces per round), and the share of time in detection, alignment, encoders, flow,
generator and paste-back (module hooks split the model's time).

Recovery (``--recovery CKPT [--config RECIPE]``): with a trained checkpoint, per photo and over several keys,
the face-region PSNR (paste mask > 0) of the anonymized photo, of the recovery with the right key, of a
recovery with a wrong key, and of right-key recoveries from JPEG re-compressions of the anonymized PNG.

Run: ``OMP_NUM_THREADS=1 python benchmarks/photos.py [--encoders paper|timm] [--rounds 2]`` and
``OMP_NUM_THREADS=1 python benchmarks/photos.py --recovery
outputs/checkpoints/ifadit/quickstart-flow/last.ckpt --config recipes/quickstart/flow.yaml``.
Results: ``results/photos*.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_name  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
BUSY_LOAD = 1.5
STAGES = ("detection", "alignment", "encoders", "flow", "generator", "paste-back")
TIMM_MODEL = {
    "phase": "flow",
    "identity_encoder": {
        "class_path": "timm",
        "init_args": {"backbone": "resnet18", "embedding_dim": 512, "in_size": 112},
    },
    "attribute_encoder": {
        "class_path": "timm",
        "init_args": {"backbone": "resnet18", "n_styles": 14, "style_dim": 512},
    },
    "mapper": {"class_path": "latent", "init_args": {"id_dim": 512, "style_dim": 512, "n_styles": 14}},
    "generator": {"class_path": "stylegan2", "init_args": {"size": 256, "channel_multiplier": 2, "n_mlp": 8}},
    "flow": {"class_path": "allinone", "init_args": {"dim": 512, "cond_dim": 512, "num_blocks": 4}},
    "key_scheme": {"class_path": "mapping", "init_args": {"dim": 512}},
    "compensator": {"class_path": "compensator", "init_args": {"dim": 512, "hidden": [1024, 2048, 1024]}},
}


def photos() -> dict[str, np.ndarray]:
    """The offline test photos (tests/photos/photo_samples.py)."""
    sys.path.insert(0, str(REPO / "tests" / "photos"))
    from photo_samples import astronaut, grace_hopper, tiled

    return {"astronaut": astronaut(), "grace_hopper": grace_hopper(), "tiled_2x2": tiled()}


def build_random_model(encoders: str) -> Any:
    """A 256 px IFADIT with random weights: nothing is downloaded or read."""
    from ifadit.api import _recipe_model_section
    from ifadit.lightning_cli import build_task_from_config

    config = TIMM_MODEL if encoders == "timm" else _recipe_model_section(REPO / "recipes/ffhq256/flow.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" warnings: expected here
        return build_task_from_config(config).model


def _hook_stages(model: Any, totals: dict[str, float]) -> None:
    """Forward pre/post hooks: the model's time split into encoders, flow (with the key scheme) and generator
    (with the mapper)."""
    groups = {
        "encoders": (model.identity_encoder, model.attribute_encoder),
        "flow": (model.flow, model.key_scheme),
        "generator": (model.mapper, model.generator),
    }
    for stage, modules in groups.items():
        for module in modules:
            starts: list[float] = []

            def pre(_m: Any, _inputs: Any, starts: list[float] = starts) -> None:
                starts.append(time.perf_counter())

            def post(
                _m: Any, _inputs: Any, _out: Any, starts: list[float] = starts, stage: str = stage
            ) -> None:
                totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - starts.pop()

            module.register_forward_pre_hook(pre)
            module.register_forward_hook(post)


def measure_speed(encoders: str, rounds: int) -> dict[str, Any]:
    import torch

    from ifadit.api import Anonymizer, StageTimer
    from ifadit.keys import SecretKey

    torch.manual_seed(0)
    model = build_random_model(encoders)
    anonymizer = Anonymizer(model, batch_size=8)
    secret = SecretKey.generate()
    images = photos()
    anonymizer.anonymize_photo(images["astronaut"], secret)  # warm-up: MTCNN, allocator, first-call costs
    timer = StageTimer()
    anonymizer.timer = timer
    model_totals: dict[str, float] = {}
    _hook_stages(model, model_totals)
    faces = 0
    start = time.perf_counter()
    for _ in range(rounds):
        for pixels in images.values():
            faces += len(anonymizer.anonymize_photo(pixels, secret).faces)
    wall = time.perf_counter() - start
    stages = {
        "detection": timer.totals.get("detection", 0.0),
        "alignment": timer.totals.get("alignment", 0.0),
        **{name: model_totals.get(name, 0.0) for name in ("encoders", "flow", "generator")},
        "paste-back": timer.totals.get("paste-back", 0.0),
    }
    stages["other"] = wall - sum(stages.values())
    photo_count = rounds * len(images)
    return {
        "encoders": encoders,
        "params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
        "photos": photo_count,
        "faces": faces,
        "wall_s": wall,
        "photos_per_s": photo_count / wall,
        "faces_per_s": faces / wall,
        "stage_s": stages,
        "stage_share": {name: value / wall for name, value in stages.items()},
    }


def _psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    diff = (a.astype(np.float64) - b.astype(np.float64))[region] / 255.0
    return float(-10 * np.log10(max(np.mean(diff**2), 1e-12)))


def _crop_psnr(a: Any, b: Any, region: Any) -> float:
    """PSNR of aligned crops in [-1, 1] over the paste-mask region of each crop, all faces pooled."""
    diff = ((a - b) / 2).pow(2).mean(dim=1)[region]
    return float(-10 * np.log10(max(diff.mean().item(), 1e-12)))


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).copy()


def measure_recovery(checkpoint: str, config: str | None, keys: int, qualities: list[int]) -> dict[str, Any]:
    import torch

    from ifadit.api import Anonymizer, compose_uint8
    from ifadit.keys import SecretKey

    anonymizer = Anonymizer.from_checkpoint(checkpoint, config=config)
    rows = []
    for name, pixels in photos().items():
        values: dict[str, list[float]] = {}

        def add(key: str, value: float, values: dict[str, list[float]] = values) -> None:
            values.setdefault(key, []).append(value)

        face_count = 0
        for _ in range(keys):
            secret, wrong = SecretKey.generate(), SecretKey.generate()
            result = anonymizer.anonymize_photo(pixels, secret)
            face_count = len(result.faces)
            region = (result.paste_mask > 0).numpy()
            anonymized = compose_uint8(pixels, result)

            def recover(img: np.ndarray, key: SecretKey, faces: list = result.faces) -> np.ndarray:
                return compose_uint8(img, anonymizer.recover_photo(img, key, faces))

            add("anonymized", _psnr(anonymized, pixels, region))
            # the model alone on the aligned crops (no paste-back, no re-alignment): where the photo numbers
            # would come from if the pipeline lost nothing
            crop_region = anonymizer.prepare(pixels, result.faces).masks[:, 0] > 0
            with torch.no_grad():
                cond = anonymizer.model.key_scheme(secret, batch_size=len(result.faces))
                cond_wrong = anonymizer.model.key_scheme(wrong, batch_size=len(result.faces))
                crops_rec = anonymizer.model.recover(result.generated, cond).image.clamp(-1, 1)
                crops_wrong = anonymizer.model.recover(result.generated, cond_wrong).image.clamp(-1, 1)
            for key, crops in (
                ("crop_anonymized", result.generated),
                ("crop_recovered", crops_rec),
                ("crop_wrong_key", crops_wrong),
            ):
                add(key, _crop_psnr(crops, result.crops, crop_region))
            add("recovered", _psnr(recover(anonymized, secret), pixels, region))
            add("wrong_key", _psnr(recover(anonymized, wrong), pixels, region))
            for quality in qualities:
                add(
                    f"recovered_from_jpeg{quality}",
                    _psnr(recover(_jpeg(anonymized, quality), secret), pixels, region),
                )
        rows.append(
            {
                "photo": name,
                "faces": face_count,
                "keys": keys,
                **{f"{k}_psnr_db": float(np.mean(v)) for k, v in values.items()},
                **{f"{k}_psnr_db_min": float(np.min(v)) for k, v in values.items()},
                **{f"{k}_psnr_db_max": float(np.max(v)) for k, v in values.items()},
            }
        )
    return {"checkpoint": checkpoint, "config": config, "resolution": anonymizer.resolution, "rows": rows}


def _header(
    title: str, started: datetime, load_start: tuple[float, ...], load_end: tuple[float, ...]
) -> list[str]:
    import torch

    threads = torch.get_num_threads()
    machine = (
        f"{cpu_name()}, nproc {os.cpu_count()}, torch {torch.__version__}, {threads} thread(s) "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), CPython {platform.python_version()}"
    )
    lines = [
        f"# {title}",
        "",
        f"- command: `python benchmarks/photos.py {shlex.join(sys.argv[1:])}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine}",
        f"- load average (1/5/15 min) at start {', '.join(f'{x:.2f}' for x in load_start)}, "
        f"at end {', '.join(f'{x:.2f}' for x in load_end)}",
    ]
    if max(load_start[0], load_end[0]) > BUSY_LOAD:
        lines.append(
            f"- **the machine was shared** (1-min load above {BUSY_LOAD} on {os.cpu_count()} cores): "
            "times are pessimistic and noisy; the shares per stage are less affected"
        )
    return lines


def speed_report(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "| model | params | photos | faces | photos/s | faces/s | " + " | ".join(STAGES) + " | other |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * (len(STAGES) + 1),
    ]
    for r in results:
        label = (
            "ArcFace IR-SE50 + pSp + StyleGAN2-256"
            if r["encoders"] == "paper"
            else "timm ResNet-18 x2 + StyleGAN2-256"
        )
        shares = " | ".join(f"{100 * r['stage_share'][s]:.1f} %" for s in (*STAGES, "other"))
        lines.append(
            f"| {label} | {r['params_millions']:.0f} M | {r['photos']} | {r['faces']} | "
            f"{r['photos_per_s']:.3f} | {r['faces_per_s']:.3f} | {shares} |"
        )
    return lines


def recovery_report(result: dict[str, Any], qualities: list[int]) -> list[str]:
    jpeg_cols = [f"recovered from JPEG q{q}" for q in qualities]
    lines = [
        "",
        f"checkpoint `{result['checkpoint']}` ({result['resolution']} px); face-region PSNR in dB (paste "
        "mask > 0) against the original, mean over keys (min–max); the *crop* columns: the model alone on "
        "the aligned crops, PSNR inside the crop's mask:",
        "",
        "| photo | faces | keys | anonymized | recovered, right key | recovered, wrong key | "
        + " | ".join(jpeg_cols)
        + " | crop: anonymized | crop: right key | crop: wrong key |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * (len(qualities) + 3),
    ]
    for row in result["rows"]:

        def cell(key: str, row: dict[str, Any] = row) -> str:
            return (
                f"{row[key + '_psnr_db']:.2f} ({row[key + '_psnr_db_min']:.2f}–"
                f"{row[key + '_psnr_db_max']:.2f})"
            )

        cells = [
            cell("anonymized"),
            cell("recovered"),
            cell("wrong_key"),
            *(cell(f"recovered_from_jpeg{q}") for q in qualities),
            cell("crop_anonymized"),
            cell("crop_recovered"),
            cell("crop_wrong_key"),
        ]
        lines.append(f"| {row['photo']} | {row['faces']} | {row['keys']} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", choices=("paper", "timm", "both"), default="both")
    parser.add_argument(
        "--rounds", type=int, default=2, help="timed passes over the 3 photos after a warm-up"
    )
    parser.add_argument("--recovery", metavar="CKPT", help="measure recovery quality with this checkpoint")
    parser.add_argument("--config", help="its recipe, for checkpoints that carry no model config")
    parser.add_argument("--keys", type=int, default=4, help="keys per photo for --recovery")
    parser.add_argument("--jpeg", type=int, nargs="*", default=[95, 75], help="JPEG qualities for --recovery")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.recovery:
        result = measure_recovery(args.recovery, args.config, args.keys, args.jpeg)
        lines = _header("Photos — recovery quality", started, load_start, os.getloadavg())
        lines += recovery_report(result, args.jpeg)
        stem = "photos_recovery"
    else:
        variants = ("paper", "timm") if args.encoders == "both" else (args.encoders,)
        result = {"speed": []}
        for variant in variants:
            print(f"{variant} ...", file=sys.stderr, flush=True)
            result["speed"].append(measure_speed(variant, args.rounds))
        lines = _header("Photos — anonymize speed on the CPU", started, load_start, os.getloadavg())
        lines += [
            "- setup: random weights at 256 px, eval mode, `torch.no_grad()`, batch up to 8 faces, "
            "photos: astronaut (1 face), Grace Hopper (1), their 2 x 2 tiling (4); one warm-up photo first",
            "- stages: detection = MTCNN; alignment = similarity fit + kornia warp + masks; encoders = "
            "identity + attribute encoder; flow = key scheme + flow; generator = mapper + StyleGAN2; "
            "paste-back = inverse warp + blend; other = the rest (tensor conversions, Python)",
        ]
        lines += speed_report(result["speed"])
        stem = "photos"
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
