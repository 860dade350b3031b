"""`make demo`: the most complete end-to-end path the project has, with live progress."""
from __future__ import annotations

import sys


def main() -> int:
    print("swarm demo: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
