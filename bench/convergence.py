"""Does 3/6/4-bit training converge like fp32? `tiny`, 4 stages x 2 replicas, four ways.

Fine-tuning-sized data (a few hundred sequences, each seen many times, the regime AQ-SGD is
built for), the same seed, data order and hyper-parameters for every variant; only the channel
codecs differ:

    fp32          none / none / none
    direct-3/6/4  q3 / q6 / q4 (error feedback on gradients)
    delta-3/6/4   q3 with AQ-SGD activation deltas / q6 / q4
    direct-q2     q2 / q6 / q4 (what low-bit forward quantization without deltas costs)

Prints JSON per variant: final and best held-out loss and the last tenth of the training loss,
each as a ratio to fp32, bits per value and wall time; saves the loss curves to
bench/out/convergence.png. Default settings take ~7-10 minutes on 2 cores; `--steps 40` is a
quick look.

    python bench/convergence.py [--steps 300] [--train-samples 256] [--batch 16]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.progress import Progress

from peers.protocol import Codecs, TrainingSpec
from swarm.local import LocalConfig, run_local

VARIANTS = {
    "fp32": Codecs("none", "none", "none"),
    "direct-3/6/4": Codecs("q3", "q6", "q4"),
    "delta-3/6/4": Codecs("q3", "q6", "q4", forward_delta=True),
    "direct-q2": Codecs("q2", "q6", "q4"),
}
OUT = Path(__file__).resolve().parent / "out"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per variant (default 300)")
    parser.add_argument("--train-samples", type=int, default=256, help="training sequences (default 256)")
    parser.add_argument("--eval-samples", type=int, default=128, help="held-out sequences (default 128)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between evaluations (default 25)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=str(OUT / "convergence.png"), help="where to save the loss curves")
    args = parser.parse_args(argv)

    reports, seconds = {}, {}
    with Progress(transient=True) as progress:
        for name, codecs in VARIANTS.items():
            task = progress.add_task(name, total=args.steps)
            training = TrainingSpec(model="tiny", batch=args.batch, micro_batches=2, steps=args.steps,
                                    seed=args.seed, lr=args.lr, warmup_steps=args.steps // 10)
            config = LocalConfig(training, codecs, stages=4, replicas=2, eval_every=args.eval_every,
                                 train_samples=args.train_samples, eval_samples=args.eval_samples)
            started = time.perf_counter()
            reports[name] = run_local(config, on_step=lambda _entry, task=task: progress.advance(task))
            seconds[name] = time.perf_counter() - started

    fp32 = reports["fp32"]
    baseline, best_baseline = fp32["final"]["eval_loss"], min(entry["loss"] for entry in fp32["eval"])
    result = {
        "benchmark": "convergence",
        "setup": {"model": "tiny", "stages": 4, "replicas": 2, "micro_batches": 2, "batch": args.batch,
                  "steps": args.steps, "train_samples": args.train_samples, "eval_samples": args.eval_samples,
                  "lr": args.lr, "seed": args.seed},
        "variants": {
            name: {"final_eval_loss": report["final"]["eval_loss"],
                   "ratio_to_fp32": report["final"]["eval_loss"] / baseline,
                   "best_eval_loss": min(entry["loss"] for entry in report["eval"]),
                   "best_eval_ratio_to_fp32": min(entry["loss"] for entry in report["eval"]) / best_baseline,
                   "final_train_loss": report["final"]["train_loss"],
                   "train_ratio_to_fp32": _tail_mean(report) / _tail_mean(fp32),
                   "bits_per_value": report["bits_per_value"],
                   "bits_per_value_final_step": report["bits_per_value_final_step"],
                   "seconds": seconds[name]}
            for name, report in reports.items()},
        "goal": "direct-3/6/4 and delta-3/6/4 final eval loss within 3% of fp32 (ratio <= 1.03)",
        "plot": _plot(reports, args.plot),
    }
    print(json.dumps(result, indent=1))
    return 0


def _tail_mean(report: dict) -> float:
    """Mean training loss over the last tenth of the steps (one step's loss is noisy)."""
    losses = [entry["loss"] for entry in report["steps"]]
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)


def _plot(reports: dict, path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return None
    figure, (train_axis, eval_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, report in reports.items():
        train_axis.plot([e["step"] for e in report["steps"]], [e["loss"] for e in report["steps"]], label=name, lw=0.8)
        eval_axis.plot([e["step"] for e in report["eval"]], [e["loss"] for e in report["eval"]], label=name, marker="o")
    for axis, title in ((train_axis, "training loss"), (eval_axis, "held-out loss")):
        axis.set_title(f"tiny, 4 stages x 2 replicas: {title}")
        axis.set_xlabel("step")
        axis.set_ylabel("nats per byte")
        axis.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    sys.exit(main())
