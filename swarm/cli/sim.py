"""`swarm-sim`: run, plan and predict swarms on one machine.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its parser
and sets `func(args) -> int` as the default: adding a subcommand is one module and one import here.
"""
from __future__ import annotations

import argparse
import sys

from swarm.cli import sim_local, sim_net, sim_plan, sim_simulate

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarm-sim", description="Run, plan and predict swarms on one machine.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (sim_local, sim_plan, sim_simulate, sim_net):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
