"""`swarm-coordinator`: the daemon that plans the swarm and keeps its checkpoints."""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm-coordinator", description="Plan and drive a swarm.")
    parser.parse_args(argv)
    print("swarm-coordinator: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
