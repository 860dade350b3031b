"""`swarm-peer`: what a volunteer runs to join a swarm."""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm-peer", description="Join a swarm as a volunteer.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("join", help="join a swarm and train the stage the coordinator assigns")
    parser.parse_args(argv)
    print("swarm-peer: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
