"""`swarm report RUN_DIR [--out DIR]`: plots and a Markdown summary of a run, from its report log.

RUN_DIR is the coordinator's `--checkpoint-dir` (where `report.jsonl` lives; the file itself works
too, and so does a run directory from before the log, with its `report.json`). Works on a run in
progress. Writes, into DIR (default RUN_DIR/report):

    loss.png          loss per committed step
    tokens_per_s.png  throughput per step (and its running median)
    bytes.png         cumulative bytes per channel (forward, backward, gradient)
    report.md         a short summary with the figures embedded

Plan changes are vertical marks on every axis (version and why). matplotlib's Agg backend: no
display is needed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run", "write_report", "FIGURES"]

FIGURES = ("loss.png", "tokens_per_s.png", "bytes.png")
_CHANNEL_COLORS = {"forward": "#2f7ed8", "backward": "#d9822b", "gradient": "#2e9d5b"}
_FP32_BITS = 32.0


def add_parser(sub: Any) -> None:
    """The `report` subcommand of `swarm`."""
    report = sub.add_parser("report", help="plots and a Markdown summary of a run directory",
                            description="Plot loss, tokens/s and bytes per channel of a run (with its plan "
                                        "changes) and write a Markdown summary, from RUN_DIR/report.jsonl.")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="the coordinator's --checkpoint-dir (or its report.jsonl)")
    report.add_argument("--out", type=Path, metavar="DIR", help="where the PNGs and report.md go "
                                                               "[default: RUN_DIR/report]")


def run(args: argparse.Namespace) -> int:
    from swarm.coordinator.report import REPORT_LOG, read_report  # the coordinator package imports torch

    source = args.run_dir / REPORT_LOG if args.run_dir.is_dir() else args.run_dir
    try:
        report = read_report(args.run_dir)
    except OSError as error:
        print(f"swarm report: cannot read {source}: {error.strerror or error}; RUN_DIR is the coordinator's "
              "--checkpoint-dir", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"swarm report: {source} is not a report: {error}", file=sys.stderr)
        return 2
    if not report.get("steps"):
        print(f"swarm report: {source} holds no committed steps yet", file=sys.stderr)
        return 2
    out = args.out or source.parent / "report"
    written = write_report(report, out, title=str(source.parent))
    for path in written:
        print(path)
    return 0


def write_report(report: dict[str, Any], out: Path, title: str = "run") -> list[Path]:
    """Write the figures and report.md into `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    steps = report["steps"]
    plans = report.get("plans", [])
    x = [entry["step"] for entry in steps]
    paths = [
        _plot(out / "loss.png", "Loss", "loss", plans,
              [("loss", "#c8372d", [(e["step"], e["loss"]) for e in steps if e.get("loss") is not None])]),
        _plot(out / "tokens_per_s.png", "Throughput", "tokens / s", plans,
              [("tokens/s", "#2f7ed8", list(zip(x, [e["tokens_per_s"] for e in steps], strict=True))),
               ("running median (9 steps)", "#1d232b", list(zip(x, _running_median(
                   [e["tokens_per_s"] for e in steps], 9), strict=True)))]),
        _plot(out / "bytes.png", "Bytes sent per channel (cumulative)", "bytes", plans,
              [(channel, color, [(e["step"], e["bytes"][channel]) for e in steps if channel in e.get("bytes", {})])
               for channel, color in _CHANNEL_COLORS.items()], fallback=report.get("bytes_per_channel", {}),
              unit="B"),
    ]
    markdown = out / "report.md"
    markdown.write_text(_markdown(report, title))
    return [*paths, markdown]


def _plot(path: Path, title: str, ylabel: str, plans: list[dict[str, Any]],
          series: list[tuple[str, str, list[tuple[float, float]]]], fallback: dict[str, int] | None = None,
          unit: str | None = None) -> Path:
    """One figure: `series` (name, colour, points) over steps, the plan changes as vertical marks.
    With no points at all and a `fallback` of totals, a bar per channel instead. unit: SI-prefixed
    y tick labels in it (e.g. "B": 3 MB)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    figure, axes = plt.subplots(figsize=(8, 4.2), dpi=110)
    drawn = [(name, color, points) for name, color, points in series if points]
    if not drawn and fallback:
        axes.bar(list(fallback), list(fallback.values()),
                 color=[_CHANNEL_COLORS.get(ch, "#777777") for ch in fallback])
        axes.set_title(f"{title} (totals: this report has no per-step counts)")
    else:
        for name, color, points in drawn:
            axes.plot([p[0] for p in points], [p[1] for p in points], label=name, color=color, linewidth=1.6,
                      marker="o" if len(points) <= 60 else None, markersize=2.5)
        xs = [p[0] for _, _, points in drawn for p in points] or [0.0, 1.0]
        near = 0.06 * (max(xs) - min(xs) or 1.0)  # labels closer than this stack downwards
        labelled: list[float] = []
        for plan in plans[1:]:
            x = plan["start_step"]
            row = sum(1 for other in labelled if abs(other - x) < near)
            labelled.append(x)
            axes.axvline(x, color="#b06ab3", linestyle="--", linewidth=1)
            axes.annotate(f"v{plan['version']} {plan['reason']['change']}", (x, 1.0),
                          xycoords=("data", "axes fraction"), xytext=(3, -12 - 10 * row), textcoords="offset points",
                          fontsize=8, color="#b06ab3")
        axes.set_xlabel("step")
        axes.set_title(title)
        if len(drawn) > 1:
            axes.legend(loc="best", fontsize=8)
    axes.set_ylabel(ylabel)
    if unit is not None:
        axes.yaxis.set_major_formatter(EngFormatter(unit=unit))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _running_median(values: list[float], window: int) -> list[float]:
    return [statistics.median(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def _markdown(report: dict[str, Any], title: str) -> str:
    steps, plans = report["steps"], report.get("plans", [])
    losses = [e["loss"] for e in steps if e.get("loss") is not None]
    head, tail = losses[:5], losses[-5:]
    throughput = [e["tokens_per_s"] for e in steps]
    wall = steps[-1]["time"] - steps[0]["time"] + steps[0]["seconds"] if len(steps) > 1 else steps[0]["seconds"]
    lines = [f"# swarm run report: {title}", "",
             "| | |", "|---|---|",
             f"| steps committed | {len(steps)} ({steps[0]['step']} to {steps[-1]['step']}) |",
             f"| loss, first 5 steps -> last 5 | {_mean(head)} -> {_mean(tail)} |",
             f"| tokens/s, median | {statistics.median(throughput):,.0f} |",
             f"| wall time of the steps | {wall:.1f} s |",
             f"| plan versions | {len(plans)} |",
             f"| replica checksum mismatches | {len(report.get('mismatches', []))} |",
             f"| last checkpoint | {report.get('checkpoint') or 'none'} |", "",
             "## Channels", "", "| channel | bytes | bits / value | vs fp32 |", "|---|---:|---:|---:|"]
    bits = report.get("bits_per_value", {})
    for channel, nbytes in sorted(report.get("bytes_per_channel", {}).items()):
        per_value = bits.get(channel)
        ratio = f"{_FP32_BITS / per_value:.1f}x smaller" if per_value else "-"
        lines.append(f"| {channel} | {nbytes:,} | {per_value:.2f} | {ratio} |" if per_value
                     else f"| {channel} | {nbytes:,} | - | {ratio} |")
    # predicted: at plan time, on the peers' join-time speeds; on achieved compute: once the plan ran
    # a few steps, on the speeds its members achieved (the coordinator's "calibrated" event)
    calibrated = {e["plan_version"]: e["calibrated_step_s"] for e in report.get("events", [])
                  if e.get("event") == "calibrated"}
    lines += ["", "## Plans", "", "| version | from step | change | why | lost | predicted s/step "
              "| on achieved compute | measured s/step |", "|---|---:|---|---|---|---:|---:|---:|"]
    for plan in plans:
        reason = plan["reason"]
        lost = ", ".join(f"{name}: {why}" for name, why in reason.get("lost", {}).items()) or "-"
        predicted, recalculated = reason.get("predicted_step_s"), calibrated.get(plan["version"])
        seconds = [e["seconds"] for e in steps if e.get("plan_version") == plan["version"] and e["seconds"] > 0]
        lines.append(f"| v{plan['version']} | {plan['start_step']} | {reason['change']} | "
                     f"{reason['text'].replace('|', '/')} | {lost} | "
                     f"{'-' if predicted is None else f'{predicted:.3g}'} | "
                     f"{'-' if recalculated is None else f'{recalculated:.3g}'} | "
                     f"{f'{statistics.median(seconds):.3g} (median)' if seconds else '-'} |")
    lines += _breakdown_table(steps)
    lines += ["", "## Figures", "", "Dashed vertical lines mark plan changes.", "",
              "![Loss per step](loss.png)", "", "![Tokens per second](tokens_per_s.png)", "",
              "![Bytes per channel](bytes.png)", ""]
    return "\n".join(lines)


_TIMES = ("compute_s", "wait_forward_s", "wait_backward_s", "allreduce_s", "commit_s")


def _breakdown_table(steps: list[dict[str, Any]]) -> list[str]:
    """Each member's median step breakdown over the run (the peers' `StepBreakdown`s, once per step)."""
    seen: dict[str, dict[int, dict[str, float]]] = {}
    for entry in steps:
        for name, times in entry.get("breakdown", {}).items():
            seen.setdefault(name, {})[times["step"]] = times
    if not seen:
        return []
    lines = ["", "## Where the time went (median seconds per step)", "",
             "| peer | steps | " + " | ".join(_TIMES) + " |", "|---|---:|" + "---:|" * len(_TIMES)]
    for name, by_step in sorted(seen.items()):
        medians = [statistics.median(times[key] for times in by_step.values()) for key in _TIMES]
        lines.append(f"| {name} | {len(by_step)} | " + " | ".join(f"{m:.3g}" for m in medians) + " |")
    return lines


def _mean(values: list[float]) -> str:
    return "-" if not values else f"{sum(values) / len(values):.4f}"
