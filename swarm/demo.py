"""`make demo`: a coordinator and 4 peers on loopback train `tiny` on the bundled corpus.

Everything runs as real processes, exactly as on separate machines (`swarm-coordinator`, four
`swarm-peer join`), with the 3/6/4-bit codecs on the wire. The live view shows the step, loss,
tokens/s, bytes per channel and the plan version; it ends by itself after `--steps` steps, and
Ctrl-C stops every process cleanly. Either way it prints where the report and checkpoint are.
The coordinator serves its live dashboard (`--http`) while the demo runs; the demo prints its URL.
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from swarm.launcher import LocalSwarm

__all__ = ["main"]

PEERS = ("p1", "p2", "p3", "p4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarm.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="steps to train [default: %(default)s]")
    parser.add_argument("--dir", type=Path, help="where logs, report and checkpoints go [default: a new temp dir]")
    parser.add_argument("--http", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="where the coordinator serves its dashboard (port 0: a free one) [default: %(default)s]")
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error(f"--steps must be positive, got {args.steps}")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="swarm-demo-"))
    # Ctrl-C and a plain `kill` both stop the swarm cleanly (SIGINT may arrive ignored from a shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    console = Console()
    console.print(f"[bold]swarm demo[/]: a coordinator and {len(PEERS)} peers on loopback, model tiny, "
                  f"2 stages x 2 replicas, codecs q3/q6/q4; logs in {directory}")
    swarm = LocalSwarm(directory)
    code = 1
    try:
        swarm.start_coordinator(["--steps", str(args.steps), "--batch", "8", "--micro-batches", "2", "--stages", "2",
                                 "--replicas", "2", "--checkpoint-every", "25", "--http", args.http])
        dashboard = swarm.dashboard_url()
        console.print(f"[bold]dashboard[/]: {dashboard}  (open it in a browser while the demo runs)")
        for name in PEERS:
            swarm.start_peer(name)
        code = _watch(swarm, args.steps, console, dashboard)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the coordinator and peers[/]")
        code = 130
    except TimeoutError as error:
        console.print(f"[red]the demo stalled:[/] {error}")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not orphan what close() reaps
            signal.signal(signum, signal.SIG_IGN)
        swarm.close()
    report = swarm.report()
    console.print()
    console.print(f"report: {swarm.checkpoint_dir / 'report.jsonl'} (plots: swarm report {swarm.checkpoint_dir})")
    console.print(f"checkpoint: {report.get('checkpoint') or 'none written yet'}")
    console.print(f"logs: {directory}/*.log")
    return code


def _watch(swarm: LocalSwarm, steps: int, console: Console, dashboard: str) -> int:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=console)
    task = progress.add_task("waiting for peers", total=steps)
    with Live(Group(progress, _table({}, dashboard)), console=console, refresh_per_second=4) as live:
        while True:
            report = swarm.report()
            done = report.get("steps", [])
            progress.update(task, completed=done[-1]["step"] if done else 0,
                            description="training" if done else "starting up (profiling, DHT, first plan)")
            live.update(Group(progress, _table(report, dashboard)))
            coordinator = swarm.processes["coordinator"].poll()
            if coordinator is not None:
                return coordinator
            time.sleep(0.25)


def _table(report: dict[str, Any], dashboard: str) -> Table:
    table = Table(show_header=False, box=None)
    table.add_row("dashboard", dashboard)
    steps, plans = report.get("steps", []), report.get("plans", [])
    if steps:
        last = steps[-1]
        table.add_row("step", f"{last['step']} (plan version {last['plan_version']})")
        table.add_row("loss", f"{_loss(last['loss'])}  (first step: {_loss(steps[0]['loss'])})")
        recent = steps[-5:]
        table.add_row("tokens/s", f"{sum(s['tokens_per_s'] for s in recent) / len(recent):,.0f}")
    if plans:
        plan = plans[-1]
        grid = "  ".join(f"stage {s}: {' '.join(row)}" for s, row in enumerate(plan["grid"]))
        table.add_row("plan", f"v{plan['version']}  {grid}")
        table.add_row("why", plan["reason"]["text"])
    bits = report.get("bits_per_value", {})
    for channel, nbytes in sorted(report.get("bytes_per_channel", {}).items()):
        table.add_row(f"{channel} bytes", f"{nbytes:,}  ({bits.get(channel, 0):.2f} bits per value)")
    return table


def _loss(value: float | None) -> str:
    """A step's loss; None when no last-stage replica reported one."""
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
