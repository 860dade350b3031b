"""`swarm-sim simulate`: discrete-event simulation of a planned swarm over many steps.

Reports throughput over time (sequences per second of each committed step), with stragglers,
peers leaving and joining (`--churn`), aborted steps and re-planning. Handles 10,000 devices:
pipelines are simulated micro-batch by micro-batch, all-reduces message by message, vectorised.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from swarm.cli.sim_plan import add_scenario_arguments, load_scenario, number_arg
from swarm.scheduler import Plan, PlanError, ScenarioError
from swarm.simulator import SimulationReport, simulate

__all__ = ["register"]

TABLE_ROWS = 20


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate", help="discrete-event simulation of a planned swarm",
        description="Simulate training steps of a plan on its scenario: micro-batches over links\n"
                    "with their bandwidth and latency, stragglers, peers leaving and joining with\n"
                    "re-planning. Prints throughput over time.",
        epilog="example: swarm-sim plan --preset dtfm-5 --out plan.json\n"
               "         swarm-sim simulate --preset dtfm-5 --plan plan.json --steps 20 --churn 30",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scenario_arguments(parser)
    parser.add_argument("--plan", required=True, metavar="PLAN.json", help="plan file from `swarm-sim plan --out`")
    parser.add_argument("--steps", type=number_arg(int, 1), required=True, metavar="N",
                        help="committed steps to simulate")
    parser.add_argument("--churn", type=number_arg(), default=0.0, metavar="PEERS_PER_HOUR",
                        help="peers leaving per hour, and as many joining (default 0)")
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default 0)")
    parser.add_argument("--jitter", type=number_arg(), default=0.05, metavar="SIGMA",
                        help="log-normal sigma of compute times (default 0.05)")
    parser.add_argument("--stragglers", type=number_arg(high=1.0), default=0.01, metavar="P",
                        help="chance per step that a device runs at half speed (default 0.01)")
    parser.add_argument("--replan-time-limit", type=number_arg(), default=2.0, metavar="S",
                        help="safety cap in seconds on each re-plan (default 2). Re-plans of more "
                             "than ~30 devices usually reach it, and a run with churn then depends "
                             "on the machine's speed; raise it (e.g. 60) for a reproducible run")
    parser.add_argument("--out", metavar="REPORT.json", help="write the full report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args)
        plan = Plan.load(args.plan).validate(scenario)
    except (ScenarioError, PlanError) as error:
        print(f"swarm-sim simulate: error: {error}", file=sys.stderr)
        return 2
    columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("steps", total=args.steps)
            report = simulate(scenario, plan, args.steps, args.churn, args.seed, args.jitter,
                              args.stragglers, args.replan_time_limit,
                              progress=lambda _record: progress.advance(task))
    except (ScenarioError, PlanError) as error:  # e.g. churn left too few devices for the stages
        print(f"swarm-sim simulate: error during the run: {error}", file=sys.stderr)
        return 1
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report.to_dict(), handle, indent=1)
    _print(Console(), report, args.out)
    return 0


def _print(console: Console, report: SimulationReport, out: str | None) -> None:
    steps = report.steps
    table = Table("steps", "clock (s)", "s / step", "sequences / s", "devices", "predicted s / step")
    for window in np.array_split(np.arange(len(steps)), min(TABLE_ROWS, len(steps))) if steps else []:
        chunk = [steps[i] for i in window]
        seconds = float(np.mean([s.seconds for s in chunk]))
        table.add_row(f"{chunk[0].step}-{chunk[-1].step}", f"{chunk[-1].end_s:.1f}", f"{seconds:.3f}",
                      f"{np.mean([s.sequences_per_s for s in chunk]):.1f}", str(chunk[-1].devices),
                      f"{np.mean([s.predicted_s for s in chunk]):.3f}")
    console.print(table)
    summary = report.to_dict()
    console.print(f"{len(steps)} steps in {summary['simulated_s']:.1f} simulated s; mean step "
                  f"{summary['mean_step_s']:.3f} s (cost model {summary['mean_predicted_s']:.3f} s); "
                  f"{report.left} left, {report.joined} joined, {report.aborted_steps} steps aborted "
                  f"({report.lost_s:.1f} s lost), {report.replans} re-plans moved {report.moved_peers} "
                  f"peers ({report.transfer_s:.1f} s loading state); {report.events} events; "
                  f"effective {summary['effective_sequences_per_s']:.1f} sequences/s")
    if report.stalled:
        console.print("[bold red]stopped early:[/] peers left faster than steps complete (every "
                      "step aborted, or too few devices for the stages); lower --churn")
    if out:
        console.print(f"report written to {out}")
