"""Tokens/s of the live swarm (real processes on loopback) against the same grid in one process.

    python bench/swarm_throughput.py                 # tiny, 2 x 2, 30 steps per variant
    python bench/swarm_throughput.py --steps 60 --batch 16 --no-fused

Each variant (3/6/4-bit codecs, and `none`) is measured twice in the same run: a full live run (a
coordinator and 4 peers, each its own OS process, talking over zmq on loopback and the hivemind
DHT) and `swarm-sim local` (`swarm.local.run_local`: the same stage executors, codecs and grid as
threads of one process, no DHT, no step protocol). Per run it reports the median tokens/s over the
steps after the first `--warmup` (process start, first kernels), the wire bytes per step per
channel and the bits per value; `live_over_local` is what the step protocol, the processes and the
sockets cost, `ratio_q364_over_none` what compression costs in CPU (on loopback bandwidth is
free; the gain it buys on slow links is `bench/net_throughput.py`'s). Peers compile the fused codec
kernels at warm-up, as `swarm-peer join` does, unless `--no-fused` (then both sides run eager).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console

import compression
from peers.protocol import Codecs, TrainingSpec
from swarm.launcher import LocalSwarm
from swarm.local import LocalConfig, run_local

VARIANTS = {"q3_q6_q4": ("q3", "q6", "q4"), "none": ("none", "none", "none")}
STAGES, REPLICAS, MICRO_BATCHES = 2, 2, 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per run [default: %(default)s]")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out [default: %(default)s]")
    parser.add_argument("--batch", type=int, default=8, help="global batch in sequences [default: %(default)s]")
    parser.add_argument("--no-fused", dest="fused", action="store_false",
                        help="eager codecs on both sides (no torch.compile at warm-up)")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup or args.warmup < 0 or args.batch <= 0:
        parser.error("--steps must exceed --warmup >= 0, and --batch must be positive")
    compression.set_fused(args.fused)
    console = Console(stderr=True)
    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="swarm-bench-"))  # kept when a run fails: its logs say why
    for name, codecs in VARIANTS.items():
        console.print(f"[bold]{name}[/]: live run of {args.steps} steps ...")
        live = _live(tmp / name, args, *codecs)
        console.print(f"[bold]{name}[/]: swarm-sim local run of {args.steps} steps ...")
        local = _local(args, *codecs)
        results[name] = {"live": live, "local": local,
                         "live_over_local": live["tokens_per_s_median"] / local["tokens_per_s_median"]}
    shutil.rmtree(tmp, ignore_errors=True)
    q364, none = (results[name]["live"]["tokens_per_s_median"] for name in ("q3_q6_q4", "none"))
    print(json.dumps({"benchmark": "swarm_throughput", "cpu": _cpu_name(),
                      "model": "tiny", "grid": f"{STAGES}x{REPLICAS}", "peers": STAGES * REPLICAS,
                      "batch": args.batch, "micro_batches": MICRO_BATCHES, "steps": args.steps,
                      "warmup_steps": args.warmup, "fused": args.fused, "variants": results,
                      "ratio_q364_over_none": q364 / none}, indent=1))
    return 0


def _live(directory: Path, args: argparse.Namespace, fwd: str, bwd: str, grad: str) -> dict:
    with LocalSwarm(directory, fused=args.fused) as swarm:
        swarm.start_coordinator(["--steps", str(args.steps), "--batch", str(args.batch), "--micro-batches",
                                 str(MICRO_BATCHES), "--stages", str(STAGES), "--replicas", str(REPLICAS),
                                 "--fwd", fwd, "--bwd", bwd, "--grad", grad, "--checkpoint-every", str(args.steps)])
        for name in ("p1", "p2", "p3", "p4"):
            swarm.start_peer(name)
        code = swarm.wait_exit("coordinator", 900)
        report = swarm.report()
    if code != 0:
        raise SystemExit(f"the {fwd}/{bwd}/{grad} run failed (exit {code}); logs in {directory}")
    timed = report["steps"][args.warmup:]
    step_s = statistics.median(s["seconds"] for s in timed)
    predicted = report["plans"][0]["reason"]["predicted_step_s"]  # one plan: nobody joins or leaves
    calibrated = next((e["calibrated_step_s"] for e in report["events"] if e.get("event") == "calibrated"), None)
    return {"codecs": {"fwd": fwd, "bwd": bwd, "grad": grad},
            "tokens_per_s_median": statistics.median(s["tokens_per_s"] for s in timed),
            "step_s_median": step_s, "predicted_step_s": predicted,
            "predicted_over_measured": predicted / step_s if predicted else None,
            "calibrated_step_s": calibrated, "calibrated_over_measured": calibrated / step_s if calibrated else None,
            "bytes_per_step": {ch: n / args.steps for ch, n in report["bytes_per_channel"].items()},
            "bits_per_value": report["bits_per_value"],
            "final_loss": report["steps"][-1]["loss"]}


def _local(args: argparse.Namespace, fwd: str, bwd: str, grad: str) -> dict:
    config = LocalConfig(TrainingSpec(batch=args.batch, micro_batches=MICRO_BATCHES, steps=args.steps),
                         Codecs(fwd, bwd, grad), stages=STAGES, replicas=REPLICAS, eval_samples=None)
    report = run_local(config)
    timed = [s["tokens_per_s"] for s in report["steps"][args.warmup:]]
    return {"tokens_per_s_median": statistics.median(timed),
            "step_s_median": statistics.median(s["seconds"] for s in report["steps"][args.warmup:]),
            "final_loss": report["steps"][-1]["loss"]}


def _cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} x {len(names)}" if names else platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
