"""``ifadit models`` and ``ifadit convert``: the presets a user can name with ``--model``, and turning the
official iFADIT release into one ifadit model file. Kept apart from :mod:`ifadit.cli`, which only registers
them."""

from __future__ import annotations

import argparse
from typing import Any

MODEL_HELP = (
    "the model: a preset name ('ifadit models' lists them), a checkpoint written by 'ifadit fit' (.ckpt), "
    "a model file written by 'ifadit convert' (.safetensors) or a preset .yaml"
)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_models(names: list[str] | None = None) -> str:
    """The presets (all, or the named ones in detail): their size, which of their files are present."""
    from ifadit.presets import PresetError, available_presets, load_preset
    from ifadit.weights import weights_dir

    presets = [load_preset(name) for name in (names or list(available_presets()))]
    if not presets:
        return "no presets"
    if names:
        out = []
        for preset in presets:
            out += [f"{preset.name}: {preset.description}", f"  preset file: {preset.path}"]
            if preset.notes:
                out.append(f"  notes: {preset.notes}")
            out.append(f"  aligned faces: {preset.resolution} px; files (weights folder {weights_dir()}):")
            for need in preset.file_needs():
                state = "present" if need.present else "MISSING"
                out.append(f"    {state:<8} {need.filename}  ({need.reference}) from {need.source}")
        return "\n".join(out)
    rows = [("name", "px", "weights", "description")]
    for preset in presets:
        try:
            missing = len(preset.missing())
            status = "ready" if not missing else f"{missing} missing"
        except PresetError as exc:  # a broken preset file is reported, the others still listed
            status = f"broken: {exc}"
        rows.append((preset.name, str(preset.resolution), status, preset.description))
    return "\n".join(
        [*_table(rows), "", "'ifadit models NAME' shows a preset's files, 'ifadit weights' where to get "
         "them; 'ifadit anonymize --model NAME' uses one"]
    )


def cmd_models(args: argparse.Namespace) -> int:
    print(format_models(args.names or None))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ifadit.model_files import convert_release

    result = convert_release(args.release_dir, args.out, preset=args.preset, overwrite=args.overwrite)
    print(
        f"ifadit convert: wrote {result.path} ({result.size_bytes / 2**20:.0f} MiB, safetensors), the "
        f"model of preset {result.preset} from {len(result.release_files)} release file(s) in "
        f"{args.release_dir}; "
        f"model fingerprint {result.fingerprint[:16]}; use it with --model {result.path}"
    )
    return 0


def add_model_parsers(sub: Any) -> None:
    """Register ``models`` and ``convert`` on the subcommand parser of :mod:`ifadit.cli`."""
    p = sub.add_parser("models", help="list the model presets --model takes, and which are ready to use")
    p.add_argument("names", nargs="*", metavar="NAME", help="show these presets in detail (their files)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "convert",
        help="turn an official iFADIT release folder into one ifadit model file (.safetensors)",
        description="Build a preset's model from an official release folder (public weights from there or "
        "the weights folder) and write its tensors and resolved config as one safetensors file that "
        "--model and Anonymizer.from_checkpoint take.",
    )
    p.add_argument("release_dir", help="the folder holding the official release files (attr_best.pth, ...)")
    p.add_argument("out", help="the .safetensors file to write (a folder: <preset>.safetensors in it)")
    p.add_argument("--preset", default="ifadit-ffhq256-official",
                   help="the preset whose model the release holds (default ifadit-ffhq256-official)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_convert)


__all__ = ["MODEL_HELP", "add_model_parsers", "cmd_convert", "cmd_models", "format_models"]
