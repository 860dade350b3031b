"""`swarm-sim net`: a real swarm over links shaped to a scenario (network namespaces, tc, cgroups).

    swarm-sim net check SCENARIO.json [--json]              # every path: configured vs measured
    swarm-sim net run SCENARIO.json --steps 20 [--model tiny --batch 8 --micro-batches 2]
        [--fwd q3 --bwd q6 --grad q4 --fwd-delta] [--plan PLAN.json] [--report out.json]
    swarm-sim net clean                                     # remove what a killed run left behind

Needs root (and iproute2); without it, it says so and exits 2. See `swarm.netsim` for the layout.
Exit codes: 0 done, 1 the run failed (its logs are printed), 2 cannot run here or bad input,
130 interrupted (everything is torn down first in every case).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from swarm.flags import add_codec_arguments, add_training_arguments

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "net", help="run a real swarm over links shaped to a scenario (root)",
        description="Run the coordinator and one swarm-peer per device of a scenario as real processes, "
                    "each in its own network namespace, over links shaped to the scenario's bandwidths "
                    "and latencies, with CPU quotas from the devices' TFLOPS. Needs root.")
    sub = parser.add_subparsers(dest="net_command", metavar="COMMAND", required=True)
    check = sub.add_parser("check", help="measure every shaped path against its configuration",
                           description="Build the scenario's network and measure every directed path with a "
                                       "zmq stream and a ping-pong through the data plane (delay line on).")
    _common(check)
    check.add_argument("--json", action="store_true", help="print a JSON list of the paths")
    check.set_defaults(func=_check)
    run = sub.add_parser("run", help="train over the emulated network and report throughput",
                         description="Train N steps over the emulated network; report tokens/s, measured against "
                                     "predicted iteration time, and bytes per path.")
    _common(run)
    add_training_arguments(run, steps_required=True)
    add_codec_arguments(run)
    run.set_defaults(fwd=None, bwd=None, grad=None)  # unset: the scenario's `compression`, else q3/q6/q4
    run.add_argument("--plan", type=Path, metavar="PLAN.json",
                     help="run this grid and layer split (a `swarm-sim plan` file) instead of the scheduler's")
    run.add_argument("--report", type=Path, metavar="OUT.json", help="write the report here (also printed)")
    run.add_argument("--skip-steps", type=int, metavar="K",
                     help="warm-up steps left out of the medians [default: max(1, steps // 5)]")
    run.add_argument("--timeout", type=float, default=900.0, metavar="S",
                     help="give up (and tear down) after S seconds [default: %(default)s]")
    run.add_argument("--fused", action="store_true", help="let peers compile fused codec kernels (slow start)")
    run.set_defaults(func=_run)
    clean = sub.add_parser("clean", help="remove namespaces and cgroups left by killed runs")
    clean.set_defaults(func=_clean)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", type=Path, metavar="SCENARIO.json",
                        help="scenario file (docs/architecture.md); small ones in swarm/presets/net/")
    parser.add_argument("--rate", type=float, metavar="MBIT",
                        help="one rate for every path instead of the scenario's (Mbit/s)")
    parser.add_argument("--unshaped", action="store_true", help="no rate limits (latency stays)")
    parser.add_argument("--latency", choices=("auto", "netem", "emulated"), default="auto",
                        help="netem where the kernel has it (auto), or the data plane's delay line [default: auto]")
    parser.add_argument("--cpu-per-device", type=float, metavar="CORES",
                        help="CPU cores of the fastest device; others get their TFLOPS share of it "
                             "[default: min(1, 0.8 x cores / devices)]")
    parser.add_argument("--no-quotas", dest="quotas", action="store_false", help="run peers without CPU quotas")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="keep logs, latency files and the coordinator's report here [default: a temporary "
                             "directory, removed afterwards]")


def _harness(args: argparse.Namespace, scenario: Any) -> Any:
    from swarm.netsim import NetHarness

    return NetHarness(scenario, workdir=args.workdir, rate_mbps=args.rate, unshaped=args.unshaped,
                      latency=args.latency, cpu_per_device=args.cpu_per_device, quotas=args.quotas,
                      say=lambda text: print(text, file=sys.stderr, flush=True))


def _guarded(args: argparse.Namespace, body: Any) -> int:
    """Run `body(scenario)` with the privilege check, error messages and exit codes of every subcommand."""
    from swarm.netsim import CommandError, NetsimUnavailable, interrupts_as_exceptions
    from swarm.scheduler import Scenario, ScenarioError

    prog = f"swarm-sim net {args.net_command}"
    try:
        with interrupts_as_exceptions():
            scenario = Scenario.load(args.scenario) if hasattr(args, "scenario") else None
            return int(body(scenario))
    except NetsimUnavailable as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    except (ScenarioError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; everything it started is torn down", file=sys.stderr)
        return 130
    except (CommandError, RuntimeError, TimeoutError, OSError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1


def _check(args: argparse.Namespace) -> int:
    from swarm.netsim.check import check_network, format_table

    def body(scenario: Any) -> int:
        with _harness(args, scenario) as net:
            results = check_network(net, say=lambda text: print(text, file=sys.stderr, flush=True))
        print(json.dumps(results, indent=1) if args.json else format_table(results))
        return 0

    return _guarded(args, body)


def _run(args: argparse.Namespace) -> int:
    from swarm.netsim.run import options_from_args, run_swarm

    def body(scenario: Any) -> int:
        options = options_from_args(args, scenario)
        with _harness(args, scenario) as net:
            report = run_swarm(net, options, say=lambda text: print(text, file=sys.stderr, flush=True))
        text = json.dumps(report, indent=1)
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(text + "\n")
        print(text)
        return 0

    return _guarded(args, body)


def _clean(args: argparse.Namespace) -> int:
    from swarm.netsim import check_privileges
    from swarm.netsim.cleanup import remove_leftovers

    def body(_scenario: Any) -> int:
        check_privileges()
        removed = remove_leftovers()
        print(json.dumps(removed, indent=1))
        return 0

    return _guarded(args, body)
