"""Tokens/s of a real 4-peer swarm over shaped links: link rate x codecs (`swarm-sim net run`, root).

    sudo .venv/bin/python bench/net_throughput.py                                  # the whole matrix
    sudo .venv/bin/python bench/net_throughput.py --rates 10,100 --codecs none,q364 --steps 12

Each cell is one `swarm-sim net run` of the 4-device scenario (2 stages x 2 replicas, every path at
the same rate, its latency as the scenario says) with one codec set: `none`, `fp16`, `q364`
(3/6/4 bits) or `q364-delta` (3/6/4 with AQ-SGD forward deltas, `--fwd-delta`). Per cell: median
tokens/s and iteration seconds over the steps after the warm-up, the cost model's prediction for
the plan run (`predicted`: compute from the peers' join-time speed; `calibrated`: from the speed
they achieved while training), wire bytes per step per channel and bits per value. Ratios from the same run: q364
against none at each rate, and each rate against the unshaped network for each codec set.
Prints JSON; whatever it measures, it reports.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "swarm" / "presets" / "net" / "uniform4.json"
CODECS: dict[str, list[str]] = {
    "none": ["--fwd", "none", "--bwd", "none", "--grad", "none"],
    "fp16": ["--fwd", "fp16", "--bwd", "fp16", "--grad", "fp16"],
    "q364": ["--fwd", "q3", "--bwd", "q6", "--grad", "q4"],
    "q364-delta": ["--fwd", "q3", "--bwd", "q6", "--grad", "q4", "--fwd-delta"],
}
RATES = "10,20,50,100,unshaped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default=RATES, help="Mbit/s per path, comma-separated; 'unshaped' for no "
                                                       "limit [default: %(default)s]")
    parser.add_argument("--codecs", default=",".join(CODECS), help=f"of {', '.join(CODECS)} [default: all]")
    parser.add_argument("--steps", type=int, default=12, help="steps per cell [default: %(default)s]")
    parser.add_argument("--batch", type=int, default=8, help="global batch in sequences [default: %(default)s]")
    parser.add_argument("--scenario", type=Path, default=SCENARIO, help="a 4-device scenario [default: uniform4]")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    rates = [r.strip() for r in args.rates.split(",") if r.strip()]
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = [c for c in codecs if c not in CODECS] + [r for r in rates if r != "unshaped" and not _number(r)]
    if unknown or args.steps < 3:
        parser.error(f"unknown rates/codecs {unknown}; --steps must be at least 3")
    cells = []
    for rate in rates:
        for codec in codecs:
            print(f"net_throughput: {codec} at {rate} Mbit/s ...", file=sys.stderr, flush=True)
            cells.append(_cell(args, rate, codec))
    result = {"benchmark": "net_throughput", "scenario": str(args.scenario.name), "model": "tiny", "grid": "2x2",
              "steps": args.steps, "batch": args.batch, "cells": cells, "ratios": _ratios(cells)}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


def _cell(args: argparse.Namespace, rate: str, codec: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="net-bench-") as scratch:
        report_path = Path(scratch) / "report.json"
        shaping = ["--unshaped"] if rate == "unshaped" else ["--rate", rate]
        command = [sys.executable, "-m", "swarm.cli.sim", "net", "run", str(args.scenario), "--steps", str(args.steps),
                   "--batch", str(args.batch), "--micro-batches", "2", *CODECS[codec], *shaping,
                   "--report", str(report_path), "--timeout", "600"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            return {"rate_mbps": rate, "codec": codec, "error": done.stderr[-2000:]}
        report = json.loads(report_path.read_text())
    return {"rate_mbps": rate, "codec": codec, "tokens_per_s": report["tokens_per_s"],
            "iteration_s": {key: report["iteration_s"][key] for key in ("measured", "predicted", "calibrated")},
            "predicted_breakdown": report["iteration_s"]["predicted_breakdown"],
            "calibrated_breakdown": report["iteration_s"]["calibrated_breakdown"],
            "bytes_per_step": report["bytes_per_step"], "bits_per_value": report["bits_per_value"],
            "latency": report["latency"], "plan": report["plan"]["grid"], "layers": report["plan"]["layers"],
            "all_steps_committed": report["all_steps_committed"],
            "loss_first_last": [report["steps"][0]["loss"], report["steps"][-1]["loss"]]}


def _ratios(cells: list[dict[str, Any]]) -> dict[str, Any]:
    tps = {(c["rate_mbps"], c["codec"]): c.get("tokens_per_s") for c in cells}
    q364_over_none = {rate: _ratio(tps.get((rate, "q364")), tps.get((rate, "none")))
                      for rate in dict.fromkeys(c["rate_mbps"] for c in cells)}
    over_unshaped = {codec: {rate: _ratio(tps.get((rate, codec)), tps.get(("unshaped", codec)))
                             for rate in dict.fromkeys(c["rate_mbps"] for c in cells) if rate != "unshaped"}
                     for codec in dict.fromkeys(c["codec"] for c in cells)}
    over_measured = {kind: {f"{c['codec']}@{c['rate_mbps']}": _ratio(c["iteration_s"][kind],
                                                                      c["iteration_s"]["measured"])
                            for c in cells if "iteration_s" in c} for kind in ("predicted", "calibrated")}
    return {"tokens_per_s_q364_over_none": q364_over_none, "tokens_per_s_rate_over_unshaped": over_unshaped,
            "iteration_predicted_over_measured": over_measured["predicted"],
            "iteration_calibrated_over_measured": over_measured["calibrated"]}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
