"""`swarm-sim`: run, plan and predict swarms on one machine.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its parser
and sets `func(args) -> int` as the default. Adding a subcommand is one module and one line in
`_SUBCOMMANDS`; a module that is not built yet still shows up in `--help`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_parser"]

# subcommand name -> (module that registers it, one-line help shown when it is missing)
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "local": ("swarm.cli.sim_local", "train a whole S x R grid in one process (pipeline engine)"),
    "plan": ("swarm.cli.sim_plan", "plan a swarm from a scenario file with the scheduler"),
    "simulate": ("swarm.cli.sim_simulate", "discrete-event simulation of a planned swarm"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarm-sim",
        description="Run, plan and predict swarms on one machine.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, summary) in _SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            stub = subparsers.add_parser(name, help=f"{summary} (not built yet)")
            stub.set_defaults(func=_not_built(name))
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def _not_built(name: str):
    def run(_args: argparse.Namespace) -> int:
        print(f"swarm-sim {name}: not built yet", file=sys.stderr)
        return 2

    return run


if __name__ == "__main__":
    sys.exit(main())
