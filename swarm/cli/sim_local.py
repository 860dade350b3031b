"""`swarm-sim local`: train a whole S x R grid in one process and write a JSON report.

The real stage executor, schedules, codecs and all-reduce, over an in-process transport: the
quickest way to see what 3/6/4-bit messages do to a loss curve before a single socket opens.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from peers.attack import ATTACK_FORMS, Attack

from ..flags import add_codec_arguments, add_training_arguments, codecs_from_args, training_from_args
from ..local import LocalConfig, run_local

__all__ = ["register", "run"]

_EXAMPLE = """example:
  swarm-sim local --model tiny --stages 4 --replicas 2 --micro-batches 2 --batch 8 --steps 50 \\
      --fwd q3 --bwd q6 --grad q4 --report runs/local.json
  swarm-sim local --stages 1 --replicas 3 --batch 6 --steps 50 --aggregate centered-clip --attack scale:1000@1
codecs: none, fp16, bf16, q1..q8 (q4@128 sets the block, q4~ rounds to nearest)."""


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `local` subcommand to `swarm-sim`."""
    parser = subparsers.add_parser(
        "local", help="train a whole S x R grid in one process (pipeline engine)",
        description="Train a model split into --stages pipeline stages x --replicas data-parallel replicas "
                    "inside one process, with compressed messages on every channel, and report losses, "
                    "bytes and bits per value.",
        epilog=_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = LocalConfig()
    add_training_arguments(parser)
    add_codec_arguments(parser)
    parser.add_argument("--stages", type=int, default=defaults.stages, help="pipeline stages S (default 1)")
    parser.add_argument("--replicas", type=int, default=defaults.replicas, help="data-parallel replicas R (default 1)")
    parser.add_argument("--schedule", default=defaults.schedule, choices=["1f1b", "gpipe"],
                        help="pipeline schedule (default 1f1b)")
    parser.add_argument("--report", default=None, metavar="PATH", help="write the JSON report here")
    parser.add_argument("--layers", default=None, metavar="N,N,...", help="layers per stage (default: even split)")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help="evaluate every K steps (default 0: at the end only)")
    parser.add_argument("--train-samples", type=int, default=None, help="use only the first N training sequences")
    parser.add_argument("--eval-samples", type=int, default=defaults.eval_samples,
                        help="held-out sequences to evaluate on (default 128)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the model context)")
    parser.add_argument("--device", default=defaults.device, metavar="cpu|cuda:N",
                        help="where every stage computes (default cpu); CUDA must be visible to torch")
    parser.add_argument("--attack", metavar="SPEC",
                        help=f"fault injector: replica R of every stage tampers with the gradient shares it sends "
                             f"in the all-reduce: {ATTACK_FORMS}; try it against --aggregate [default: off]")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `swarm-sim local`; returns the exit status (2 on bad input, with the flag named)."""
    console = Console(stderr=True, soft_wrap=True)
    try:
        config = _config(args)
        config.check()
    except ValueError as error:
        console.print(f"swarm-sim local: error: {error}", markup=False, highlight=False)
        return 2
    if config.attack is not None:
        console.print(f"swarm-sim local: FAULT INJECTOR ACTIVE: replica {config.attack.replica} of every stage "
                      f"sends tampered gradient shares ({config.attack}); --aggregate {config.training.aggregate}",
                      markup=False, highlight=False)
    with Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), console=console, disable=args.quiet) as progress:
        task = progress.add_task("train", total=config.training.steps, status="")

        def on_step(entry: dict[str, Any]) -> None:
            status = f"loss {entry['loss']:.3f}  {entry['tokens_per_s']:.0f} tok/s"
            progress.update(task, advance=1, status=status)

        try:
            report = run_local(config, on_step=on_step)
        except ValueError as error:
            console.print(f"swarm-sim local: error: {error}", markup=False, highlight=False)
            return 2
        except KeyboardInterrupt:
            console.print("swarm-sim local: interrupted; no report written", highlight=False)
            return 130
    if args.report:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
    if not args.quiet:
        final, bits = report["final"], report["bits_per_value"]
        shown = ", ".join(f"{k} {v:.2f}" for k, v in bits.items() if v is not None) or "no messages"
        console.print(f"train loss {final['train_loss']:.4f}, eval loss {final['eval_loss']:.4f}; "
                      f"bits per value: {shown}; replicas identical: {final['replicas_identical']}"
                      + (f"; report: {args.report}" if args.report else ""), highlight=False)
        if final["suspects"]:
            named = ", ".join(f"{name} ({count}x)" for name, count in final["suspects"].items())
            console.print(f"suspects flagged by the all-reduce: {named}", markup=False, highlight=False)
    return 0


def _config(args: argparse.Namespace) -> LocalConfig:
    layers = None
    if args.layers is not None:
        try:
            layers = [int(part) for part in args.layers.split(",")]
        except ValueError:
            raise ValueError(f"--layers must be comma-separated integers like 2,2, got {args.layers!r}") from None
    return LocalConfig(training=training_from_args(args), codecs=codecs_from_args(args), stages=args.stages,
                       replicas=args.replicas, schedule=args.schedule, layers=layers, eval_every=args.eval_every,
                       train_samples=args.train_samples, eval_samples=args.eval_samples, seq_len=args.seq_len,
                       device=args.device, attack=Attack.parse(args.attack) if args.attack else None)
