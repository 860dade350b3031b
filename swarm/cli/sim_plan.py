"""`swarm-sim plan`: plan a swarm from a scenario file and compare with the baselines.

Prints the plan's predicted seconds per iteration with its breakdown, and next to it the best
of 5,000 random placements and a lower bound for the same shape, so a user sees at a glance how
much the placement matters and how much room is left. `--out` writes the plan file that
`swarm-sim simulate` and the coordinator read.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Callable

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from swarm.scheduler import Plan, PlanError, Scenario, ScenarioError, plan, preset_names
from swarm.scheduler.baselines import best_random, lower_bound
from swarm.scheduler.cost import COST_MODELS, cost_model

__all__ = ["register", "add_scenario_arguments", "load_scenario", "number_arg"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan", help="plan a swarm from a scenario file with the scheduler",
        description="Search a placement (stages x replicas grid and layers per stage) for a\n"
                    "scenario and print its predicted iteration time next to the best of N\n"
                    "random placements and a lower bound.",
        epilog="examples: swarm-sim plan --preset dtfm-5 --cost-model dtfm --out plan.json\n"
               "          swarm-sim plan swarm.json --time-limit 60",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scenario_arguments(parser)
    parser.add_argument("--cost-model", choices=sorted(COST_MODELS), default="full",
                        help="full: compute, memory, compression (default); dtfm: DT-FM's published model")
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="search seed (default 0)")
    parser.add_argument("--time-limit", type=number_arg(low=0.0, low_allowed=False), default=60.0, metavar="S",
                        help="safety cap in seconds (default 60). The search does a fixed amount "
                             "of work for the swarm's size (1,024 devices: ~30 s on 2 busy cores), "
                             "so the same --seed gives the same plan on any machine; a search "
                             "stopped by this limit returns its best so far, which then depends "
                             "on the machine's speed and load")
    parser.add_argument("--out", metavar="PLAN.json", help="write the plan file here")
    parser.add_argument("--random-samples", type=number_arg(int), default=5000, metavar="N",
                        help="random placements to compare against (default 5000; 0 skips)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.set_defaults(func=run)


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """SCENARIO.json or --preset NAME: the two ways every swarm-sim command names a scenario."""
    parser.add_argument("scenario", nargs="?", metavar="SCENARIO.json",
                        help="scenario file: devices, sites, links, model, batch, compression, parallelism")
    parser.add_argument("--preset", metavar="NAME",
                        help=f"a packaged scenario instead of a file: {', '.join(preset_names())}")


def load_scenario(args: argparse.Namespace) -> Scenario:
    if (args.scenario is None) == (args.preset is None):
        raise ScenarioError("give either a SCENARIO.json file or --preset NAME (exactly one)")
    return Scenario.preset(args.preset) if args.preset else Scenario.load(args.scenario)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        scenario = load_scenario(args)
        with _spinner(console, f"planning {len(scenario.devices)} devices ({args.cost_model} model)"):
            result = plan(scenario, args.cost_model, args.seed, args.time_limit)
        model = cost_model(args.cost_model, scenario, result.stages, result.replicas)
        rows = {"plan": result.predicted["iteration_s"]}
        if args.random_samples > 0:
            with _spinner(console, f"best of {args.random_samples} random placements"):
                rows[f"best of {args.random_samples} random"] = best_random(model, args.random_samples, args.seed)
        rows["lower bound"] = lower_bound(model)
    except (ScenarioError, PlanError) as error:
        print(f"swarm-sim plan: error: {error}", file=sys.stderr)
        return 2
    if args.out:
        result.save(args.out)
    if args.json:
        print(json.dumps({"plan": result.to_dict(), "compare": rows}, indent=1))
    else:
        _print(Console(), scenario, result, rows, args.out)
    return 0


def _print(console: Console, scenario: Scenario, result: Plan, rows: dict[str, float], out: str | None) -> None:
    p = result.predicted
    console.print(f"[bold]{scenario.name}[/]: {result.stages} stages x {result.replicas} replicas, "
                  f"layers {list(result.layers)} ({result.cost_model} cost model)")
    console.print(f"predicted iteration {p['iteration_s']:.3f} s = compute {p['compute_s']:.3f} + "
                  f"pipeline {p['pipeline_s']:.3f} + data-parallel {p['data_parallel_s']:.3f} + "
                  f"control {p['control_s']:.3f}")
    table = Table("placement", "s / iteration", "vs plan")
    for name, seconds in rows.items():
        ratio = "-" if seconds >= 1e9 else f"{seconds / rows['plan']:.2f}x"
        table.add_row(name, "does not fit memory" if seconds >= 1e9 else f"{seconds:.3f}", ratio)
    console.print(table)
    if out:
        console.print(f"plan written to {out}")


def _spinner(console: Console, text: str) -> Progress:
    progress = Progress(SpinnerColumn(), TextColumn(text), TimeElapsedColumn(), console=console, transient=True)
    progress.add_task(text, total=None)
    return progress


def number_arg(cast: Callable[[str], float] = float, low: float = 0.0, high: float = math.inf,
               low_allowed: bool = True) -> Callable[[str], float]:
    """An argparse `type`: `cast` of the text, finite and inside [low, high] (or (low, high]).

    Example: `parser.add_argument("--steps", type=number_arg(int, 1))`; a bad value is a usage
    error (exit 2) that says which range was expected.
    """
    def parse(value: str) -> float:
        try:
            number = cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if cast is int else ''}number, "
                                             f"got {value!r}") from None
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
        if not ((number >= low if low_allowed else number > low) and number <= high):
            bound = "at least" if low_allowed else "more than"
            limit = f" and at most {high:g}" if high < math.inf else ""
            raise argparse.ArgumentTypeError(f"must be {bound} {low:g}{limit}, got {value!r}")
        return number
    return parse
