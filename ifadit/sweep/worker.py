"""``python -m ifadit.sweep.worker JOB.json``: one sweep child in its own process (parallel sweeps).

Exit status 0: the child finished and was scored; 1: it failed and its run says why; anything else: the
process died, and the sweep records that in the child's run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ifadit.sweep.child import ChildJob, execute_child


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m ifadit.sweep.worker JOB.json", file=sys.stderr)
        return 2
    job = ChildJob.from_json(json.loads(Path(args[0]).read_text()))
    return 0 if execute_child(job) else 1


if __name__ == "__main__":
    sys.exit(main())
