"""`swarm`: the operator's view of a running swarm (`swarm status`)."""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm", description="Inspect a running swarm.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = sub.add_parser("status", help="peers, plan version, step, loss and throughput")
    status.add_argument("--initial-peers", nargs="+", required=True, metavar="MULTIADDR")
    status.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.parse_args(argv)
    print("swarm status: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
