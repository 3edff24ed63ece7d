"""The ``ifadit align`` subcommand: its parser and handler (``ifadit/cli.py`` registers them)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_align(args: argparse.Namespace) -> int:
    """``ifadit align RAW_DIR OUT_DIR``: exit 0 when every photo was read (photos without a usable face are
    reported and skipped, not failures), 1 when some could not be read."""
    from ifadit.photos.aligner import AlignOptions, align_folder

    options = AlignOptions(
        size=args.size,
        faces=args.faces,
        min_face_size=args.min_face_size,
        device=args.device,
        detect_max_side=args.detect_max_side,
        progress=False if args.no_progress else None,
    )
    summary = align_folder(args.raw_dir, args.out_dir, options)
    print(
        f"ifadit align: wrote {len(summary.written)} face(s) at {args.size} px into {args.out_dir} from "
        f"{summary.photos} photo(s): {summary.done_before} done earlier, {len(summary.no_face)} without a "
        f"usable face, {len(summary.failed)} failed"
    )
    return 0 if summary.ok else 1


def add_align_parser(sub: Any) -> None:
    """Add ``align`` to the ``ifadit`` subcommands."""
    what = "align every face of a folder of photos as FFHQ does, into a training folder"
    p = sub.add_parser(
        "align",
        help=what + " (resumable)",
        description=what + ". Sub-folders (one per identity) are kept; photos without a usable face are "
        "reported and skipped; a re-run skips the photos already done (ifadit-align.jsonl in OUT_DIR).",
    )
    p.add_argument("raw_dir", metavar="RAW_DIR", help="folder of JPEG/PNG/WebP photos (searched recursively)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the aligned PNGs (not inside RAW_DIR)")
    p.add_argument("--size", type=int, default=256, help="side of the aligned crops in pixels (default 256)")
    p.add_argument(
        "--faces",
        choices=("all", "largest"),
        default="all",
        help="every face of a photo, or only its largest (for identity folders with group photos; "
        "default all)",
    )
    p.add_argument(
        "--min_face_size",
        type=int,
        default=64,
        help="smallest usable face (detected box side, pixels; default 64): smaller ones are not written",
    )
    p.add_argument("--device", default="cpu", help="torch device for detection (default cpu)")
    p.add_argument(
        "--detect_max_side",
        type=int,
        default=1600,
        help="largest image the face detector sees at once: larger photos are searched in overlapping tiles "
        "at full resolution (default 1600)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_align)


__all__ = ["add_align_parser", "cmd_align"]
