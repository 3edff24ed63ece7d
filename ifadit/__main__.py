"""``python -m ifadit``: the ``ifadit`` command, for environments without the console script on PATH."""

import sys

from ifadit.cli import main

if __name__ == "__main__":
    sys.exit(main())
