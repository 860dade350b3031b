"""Tokens/s of the live swarm (real processes on loopback) with 3/6/4-bit codecs and with `none`.

    python bench/swarm_throughput.py                 # tiny, 2 x 2, 30 steps per variant
    python bench/swarm_throughput.py --steps 60 --batch 16

Each variant is a full live run: a coordinator and 4 peers, each its own OS process, talking over
zmq on loopback and the hivemind DHT. Per variant it reports the median tokens/s over the
committed steps (the first `--warmup` steps excluded: process start, first kernels), the wire
bytes per step per channel and the bits per value. `ratio_q364_over_none` compares medians from
the same run. On loopback bandwidth is free, so this measures what compression costs in CPU;
the gain it buys on slow links is what the scheduler's cost model and `swarm-sim simulate` show.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from swarm.launcher import LocalSwarm

VARIANTS = {"q3_q6_q4": ("q3", "q6", "q4"), "none": ("none", "none", "none")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per variant [default: %(default)s]")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out [default: %(default)s]")
    parser.add_argument("--batch", type=int, default=8, help="global batch in sequences [default: %(default)s]")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup or args.warmup < 0 or args.batch <= 0:
        parser.error("--steps must exceed --warmup >= 0, and --batch must be positive")
    console = Console(stderr=True)
    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="swarm-bench-"))  # kept when a run fails: its logs say why
    for name, (fwd, bwd, grad) in VARIANTS.items():
        console.print(f"[bold]{name}[/]: live run of {args.steps} steps ...")
        results[name] = _run(tmp / name, args, fwd, bwd, grad)
    shutil.rmtree(tmp, ignore_errors=True)
    q364, none = results["q3_q6_q4"]["tokens_per_s_median"], results["none"]["tokens_per_s_median"]
    print(json.dumps({"benchmark": "swarm_throughput", "model": "tiny", "grid": "2x2", "peers": 4,
                      "batch": args.batch, "steps": args.steps, "warmup_steps": args.warmup, "variants": results,
                      "ratio_q364_over_none": q364 / none if none else None}, indent=1))
    return 0


def _run(directory: Path, args: argparse.Namespace, fwd: str, bwd: str, grad: str) -> dict:
    with LocalSwarm(directory) as swarm:
        swarm.start_coordinator(["--steps", str(args.steps), "--batch", str(args.batch), "--micro-batches", "2",
                                 "--stages", "2", "--replicas", "2", "--fwd", fwd, "--bwd", bwd, "--grad", grad,
                                 "--checkpoint-every", str(args.steps)])
        for name in ("p1", "p2", "p3", "p4"):
            swarm.start_peer(name)
        code = swarm.wait_exit("coordinator", 600)
        report = swarm.report()
    if code != 0:
        raise SystemExit(f"the {fwd}/{bwd}/{grad} run failed (exit {code}); logs in {directory}")
    timed = [s["tokens_per_s"] for s in report["steps"][args.warmup:]]
    return {"codecs": {"fwd": fwd, "bwd": bwd, "grad": grad},
            "tokens_per_s_median": statistics.median(timed),
            "bytes_per_step": {ch: n / args.steps for ch, n in report["bytes_per_channel"].items()},
            "bits_per_value": report["bits_per_value"],
            "final_loss": report["steps"][-1]["loss"]}


if __name__ == "__main__":
    sys.exit(main())
