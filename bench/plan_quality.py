"""Does placement matter over real shaped links, and does the cost model rank plans as measured? (root)

    sudo .venv/bin/python bench/plan_quality.py                      # both scenarios, 12 steps per plan
    sudo .venv/bin/python bench/plan_quality.py --scenarios two-sites --steps 10

For each scenario (`two-sites`: fast links inside two sites, a slow one between; `home-volunteers`:
own uplinks of 100/50/20/10 Mbit/s and one half-speed device) it runs `swarm-sim net run` with:
- `scheduler`: no --plan, the live coordinator plans from the peers' measured records;
- `scheduler-offline`: `swarm.scheduler.plan` on the scenario file, run with --plan (only when it
  differs from the live plan);
- `best-random`: the best of `--random` random placements (even layer split) under the `full` model;
- `locality-dp`, `locality-pipeline`: the two site-locality baselines (`swarm/scheduler/construct.py`).
Per plan: measured tokens/s and iteration seconds, the report's prediction (the `full` model on the
shaped network with the peers' measured compute) and the offline prediction on the scenario file.
Then whether the predicted order of the plans is the measured order (and the pairwise agreement).
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from models import even_layers
from swarm.scheduler import Plan, Scenario, plan, predict
from swarm.scheduler.construct import locality_dp, locality_pipeline, random_grid
from swarm.scheduler.cost import cost_model

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "swarm" / "presets" / "net"
SCENARIOS = ("two-sites", "home-volunteers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="of %(default)s")
    parser.add_argument("--steps", type=int, default=12, help="steps per plan [default: %(default)s]")
    parser.add_argument("--random", type=int, default=1000, help="random placements to pick the best of")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    results = {}
    for name in (s.strip() for s in args.scenarios.split(",") if s.strip()):
        results[name] = _scenario(PRESETS / f"{name}.json", args)
    text = json.dumps({"benchmark": "plan_quality", "steps": args.steps, "scenarios": results}, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


def _baselines(scenario: Scenario, samples: int) -> dict[str, Plan]:
    stages, replicas = scenario.parallelism.stages, scenario.parallelism.replicas  # type: ignore[union-attr]
    ids = [d.id for d in scenario.devices]
    layers = np.asarray(even_layers(scenario.model.layers, stages), dtype=np.int64)
    model = cost_model("full", scenario, stages, replicas)
    rng = np.random.default_rng(0)
    grids = (random_grid(rng, len(ids), stages, replicas) for _ in range(samples))
    best = min(grids, key=lambda grid: model.arranged_score(grid, layers))

    def as_plan(grid: Any) -> Plan:
        return Plan(scenario.name, tuple(tuple(ids[i] for i in row) for row in grid), tuple(int(n) for n in layers))

    return {"best-random": as_plan(best), "locality-dp": as_plan(locality_dp(scenario, stages, replicas)),
            "locality-pipeline": as_plan(locality_pipeline(scenario, stages, replicas)),
            "scheduler-offline": plan(scenario, "full", seed=0, time_limit=30.0)}


def _scenario(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    scenario = Scenario.load(path)
    plans = _baselines(scenario, args.random)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="plan-quality-") as scratch:
        print(f"plan_quality: {scenario.name}: scheduler (live) ...", file=sys.stderr, flush=True)
        rows["scheduler"] = _run(path, None, Path(scratch) / "scheduler", args.steps)
        live = rows["scheduler"].get("grid")
        for name, chosen in plans.items():
            if name == "scheduler-offline" and live == [list(r) for r in chosen.grid] \
                    and rows["scheduler"].get("layers") == list(chosen.layers):
                rows["scheduler"]["same_as_offline"] = True
                continue
            plan_file = Path(scratch) / f"{name}.json"
            chosen.save(plan_file)
            print(f"plan_quality: {scenario.name}: {name} {chosen.grid} ...", file=sys.stderr, flush=True)
            rows[name] = _run(path, plan_file, Path(scratch) / name, args.steps)
    for row in rows.values():
        if "grid" in row:
            given = Plan(scenario.name, tuple(tuple(r) for r in row["grid"]), tuple(row["layers"]))
            row["predicted_offline_s"] = round(predict(scenario, given, "full").iteration_s, 4)
    return {"plans": rows, "ranking": _ranking(rows)}


def _run(scenario: Path, plan_file: Path | None, work: Path, steps: int) -> dict[str, Any]:
    report_path = work / "report.json"
    work.mkdir(parents=True)
    command = [sys.executable, "-m", "swarm.cli.sim", "net", "run", str(scenario), "--steps", str(steps),
               "--report", str(report_path), "--timeout", "600", *(["--plan", str(plan_file)] if plan_file else [])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    report = json.loads(report_path.read_text())
    return {"grid": report["plan"]["grid"], "layers": report["plan"]["layers"],
            "tokens_per_s": report["tokens_per_s"], "measured_s": report["iteration_s"]["measured"],
            "predicted_s": report["iteration_s"]["predicted"], "all_steps_committed": report["all_steps_committed"]}


def _ranking(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ok = {name: row for name, row in rows.items() if "tokens_per_s" in row and row.get("predicted_s")}
    measured = sorted(ok, key=lambda n: -ok[n]["tokens_per_s"])
    predicted = sorted(ok, key=lambda n: ok[n]["predicted_s"])
    offline = sorted(ok, key=lambda n: ok[n]["predicted_offline_s"])
    pairs = list(itertools.combinations(ok, 2))

    def agreement(key: str) -> float | None:
        if not pairs:
            return None
        same = sum(bool((ok[a][key] < ok[b][key]) == (ok[a]["measured_s"] < ok[b]["measured_s"])) for a, b in pairs)
        return round(float(same) / len(pairs), 3)

    return {"measured_order": measured, "predicted_order": predicted, "predicted_offline_order": offline,
            "same_order": measured == predicted, "same_order_offline": measured == offline,
            "pairwise_agreement": agreement("predicted_s"),
            "pairwise_agreement_offline": agreement("predicted_offline_s"),
            "best_measured_over_worst": round(ok[measured[0]]["tokens_per_s"] / ok[measured[-1]]["tokens_per_s"], 3)
            if measured else None}


if __name__ == "__main__":
    sys.exit(main())
