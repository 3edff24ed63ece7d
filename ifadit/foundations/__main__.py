"""``python -m ifadit.foundations [NAME ...]``: export trained foundation runs into the package."""

from __future__ import annotations

import argparse
from pathlib import Path

from ifadit.foundations import FOUNDATIONS, export, update_manifest
from ifadit.lightning_cli import last_checkpoint
from ifadit.weights import SHIPPED_DIR, SHIPPED_MANIFEST, WeightsError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [f.name for f in FOUNDATIONS]
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"foundations to export (default: all): {', '.join(names)}")
    parser.add_argument("--checkpoints", default="outputs/checkpoints/ifadit",
                        help="the folder of the training runs (each foundation reads its last checkpoint)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown foundation {unknown[0]!r}; known: {', '.join(names)}")
    entries = {}
    for foundation in FOUNDATIONS:
        if args.names and foundation.name not in args.names:
            continue
        checkpoint = last_checkpoint(Path(args.checkpoints) / foundation.run)
        if checkpoint is None:
            raise SystemExit(f"error: no last checkpoint in {args.checkpoints}/{foundation.run}: "
                             f"train {foundation.recipe} first")
        try:
            entries[foundation.name] = entry = export(foundation, checkpoint, SHIPPED_DIR)
        except WeightsError as exc:
            raise SystemExit(f"error: {exc}") from None
        path = SHIPPED_DIR / entry["filename"]
        print(f"{foundation.name}: {path} ({path.stat().st_size / 2**20:.1f} MiB) sha256 {entry['sha256']}")
    update_manifest(entries, SHIPPED_MANIFEST)
    print(f"manifest: {SHIPPED_MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
