"""Scheduler benchmark: plan cost against the baselines, and planning time at 1,024 devices.

For each scenario (the five DT-FM presets, heterogeneous volunteer swarms of our own) and each
cost model it plans with `swarm.scheduler.plan` and prices, for the same S x R shape, a
DT-FM-budget genetic algorithm (population 100, 5,000 evaluations), the best of 5,000 random
placements, both locality plans and a lower bound. Then it plans a 1,024-device volunteer swarm
(32 sites, mixed GPUs, home uplinks) and reports the wall time. Prints JSON (ratios are baseline
cost / our cost, so > 1 means we win; medians over the rows) with the README table under
"markdown"; `--markdown` prints only the table. `--quick` shrinks budgets for a smoke run.

    python bench/scheduler.py            # full run, a few minutes on 2 cores
    python bench/scheduler.py --markdown
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from rich.console import Console
from rich.progress import Progress

from swarm.scheduler import Scenario, plan, preset_names
from swarm.scheduler.baselines import best_random, genetic, locality, lower_bound
from swarm.scheduler.cost import cost_model
from swarm.scheduler.synthetic import volunteer_scenario

BASELINES = ("ga", "random", "locality-dp", "locality-pipeline")


def compare(scenario: Scenario, model_name: str, time_limit: float, samples: int, seed: int) -> dict:
    """One row: our plan's cost and every baseline's for the same shape."""
    start = time.perf_counter()
    result = plan(scenario, model_name, seed=seed, time_limit=time_limit)
    plan_s = time.perf_counter() - start
    model = cost_model(model_name, scenario, result.stages, result.replicas)
    row = {"scenario": scenario.name, "devices": len(scenario.devices), "cost_model": model_name,
           "shape": [result.stages, result.replicas], "plan_s": round(plan_s, 2),
           "ours": result.predicted["iteration_s"],
           "ga": genetic(model, samples, seed), "random": best_random(model, samples, seed),
           **locality(model), "lower_bound": lower_bound(model)}
    row["ratios"] = {name: _ratio(row[name], row["ours"]) for name in BASELINES}
    row["no_worse_than_all"] = all(row["ours"] <= row[name] * (1 + 1e-9) for name in BASELINES)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| scenario | cost model | ours (s) | GA | best random | locality-dp | locality-pipeline | lower bound |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [_seconds(row[k]) for k in ("ours", "ga", "random", "locality-dp", "locality-pipeline", "lower_bound")]
        lines.append(f"| {row['scenario']} | {row['cost_model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets: a smoke run in about a minute")
    parser.add_argument("--markdown", action="store_true", help="print the README table instead of JSON")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    samples = 300 if args.quick else 5000
    # the search's work is fixed per swarm size; the limits are safety caps (a row that reaches
    # one is no longer reproducible), except in --quick where they cut the search short
    limit = 1.0 if args.quick else 120.0
    big_limit = 5.0 if args.quick else 60.0
    scenarios = [Scenario.preset(name) for name in preset_names()]
    scenarios += [volunteer_scenario(64, 12, seed=1, parallelism={"stages": 8, "replicas": 8}),
                  volunteer_scenario(96, 24, seed=2)]
    rows = []
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("scenarios x cost models", total=2 * len(scenarios) + 1)
        for scenario in scenarios:
            for model_name in ("dtfm", "full"):
                rows.append(compare(scenario, model_name, limit, samples, args.seed))
                progress.advance(task)
        big = volunteer_scenario(1024, 32, seed=0)
        scale = compare(big, "full", big_limit, samples, args.seed)
        progress.advance(task)
    if args.markdown:
        print(markdown(rows + [scale]))
        return 0
    medians = {name: statistics.median(r["ratios"][name] for r in rows) for name in BASELINES}
    world = next(r for r in rows if r["scenario"] == "dtfm-case5-worldwide" and r["cost_model"] == "dtfm")
    print(json.dumps({
        "rows": rows,
        "median_ratio_baseline_over_ours": medians,
        "all_rows_no_worse_than_every_baseline": all(r["no_worse_than_all"] for r in rows + [scale]),
        "worldwide_dtfm_random_over_ours": world["ratios"]["random"],
        "scale_1024": {"devices": 1024, "sites": 32, "time_limit_s": big_limit, "plan_s": scale["plan_s"],
                       "shape": scale["shape"], "ratios": scale["ratios"]},
        "markdown": markdown(rows + [scale]),
    }, indent=1))
    return 0


def _ratio(baseline: float, ours: float) -> float | None:
    return None if baseline >= 1e9 else round(baseline / ours, 3)


def _seconds(value: float) -> str:
    return "no fit" if value >= 1e9 else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
