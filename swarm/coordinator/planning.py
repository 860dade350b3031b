"""From live peer records to plans: the first placement, repairs after churn, growth on joins.

The first plan comes from the scheduler (`swarm.scheduler.plan`) on a scenario built from the
peers' measured TFLOPS, memory and links. After that the layer split is fixed (a stage's state
must keep its shape to move between peers) and changes are incremental, each with a reason:

- repair: members that left or died are replaced by standby peers where possible; a stage with
  no survivor and no standby shrinks the grid to the replicas every stage can still fill.
- growth (hysteresis): standby peers are brought in only when they fill a whole new pipeline
  replica, and not sooner than `MIN_STEPS_BETWEEN_CHANGES` after the last change, so a peer that
  flaps never makes the swarm thrash.

Each cell gets a state source: "keep", "peer:NAME" (donors spread round-robin over the stage's
live holders), "checkpoint" (no live holder) or "init" (first plan of a fresh run).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle
from typing import Any

from models.config import get_config
from peers.protocol import PeerRecord, PlanRecord
from swarm.scheduler import Plan, Scenario, predict
from swarm.scheduler import plan as schedule

__all__ = ["Placement", "MIN_STEPS_BETWEEN_CHANGES", "scenario_from_records", "first_placement",
           "repair", "grow", "assign_sources", "predicted_step_s"]

MIN_STEPS_BETWEEN_CHANGES = 3
_DEFAULT_LINK = {"bandwidth_gbps": 1.0, "latency_ms": 1.0}


@dataclass
class Placement:
    """A grid, its layer split, the peers left over, and why it looks like this."""

    grid: list[list[str]]
    layers: list[int]
    standby: list[str]
    reason: str


def scenario_from_records(records: dict[str, PeerRecord], hyper: dict[str, Any], codecs: dict[str, str],
                          stages: int | None, replicas: int | None) -> Scenario:
    """A scheduler scenario (DESIGN.md section 3) with one site per peer and the links they measured."""
    model = get_config(hyper["model"])
    measured = {(name, peer): (float(link["bandwidth_gbps"]), float(link["latency_ms"]))
                for name, record in records.items() for peer, link in record.links.items() if peer in records}
    devices = [{"id": n, "tflops": max(records[n].tflops, 1e-6), "memory_gb": max(records[n].memory_gb, 1e-3)}
               for n in sorted(records)]
    micro = max(1, hyper["batch"] // ((replicas or 1) * hyper["micro_batches"]))
    parallelism = {"stages": stages, "replicas": replicas} if stages is not None and replicas is not None else None
    return Scenario.from_measurements(
        "live", devices, measured,
        model={"layers": model.layers, "d_model": model.d_model, "heads": model.heads, "seq_len": model.context,
               "vocab": model.vocab},
        batch={"global_sequences": hyper["batch"], "micro_sequences": micro},
        compression={"forward_bits": _bits(codecs["fwd"]), "backward_bits": _bits(codecs["bwd"]),
                     "gradient_bits": _bits(codecs["grad"])},
        parallelism=parallelism, fallback=(_DEFAULT_LINK["bandwidth_gbps"], _DEFAULT_LINK["latency_ms"]))


def first_placement(records: dict[str, PeerRecord], scenario: Scenario, seed: int) -> Placement:
    """The scheduler's plan for the announced peers; peers it leaves out are standby."""
    planned = schedule(scenario, cost_model="full", seed=seed, time_limit=5.0)
    grid = [list(row) for row in planned.grid]
    used = {name for row in grid for name in row}
    standby = sorted(set(records) - used)
    predicted = planned.predicted.get("iteration_s")
    reason = (f"first plan: {len(grid)} stages x {len(grid[0])} replicas from {len(records)} peers by the scheduler"
              + (f" (predicted {predicted:.3g} s/step)" if predicted is not None else ""))
    return Placement(grid=grid, layers=[int(n) for n in planned.layers], standby=standby, reason=reason)


def predicted_step_s(placement: Placement, records: dict[str, PeerRecord], hyper: dict[str, Any],
                     codecs: dict[str, str]) -> float | None:
    """The scheduler's cost model's seconds per step for `placement` (None if it cannot price it)."""
    members = {n: records[n] for row in placement.grid for n in row if n in records}
    replicas = len(placement.grid[0])
    try:
        scenario = scenario_from_records(members, hyper, codecs, None, replicas)
        priced = Plan("live", tuple(tuple(row) for row in placement.grid), tuple(placement.layers))
        return predict(scenario, priced, "full").iteration_s
    except ValueError:  # the scheduler's ScenarioError / PlanError: e.g. a peer without a record
        return None


def repair(plan: PlanRecord, live: set[str], lost: dict[str, str]) -> Placement:
    """Replace `lost` members (name -> why) by standby peers, shrinking replicas if a stage runs dry."""
    standby = [name for name in plan.standby if name in live]
    grid = [[name if name not in lost else "" for name in row] for row in plan.grid]
    filled = []
    for row in grid:
        for r, name in enumerate(row):
            if not name and standby:
                row[r] = standby.pop(0)
                filled.append(row[r])
    why = "; ".join(f"{name} {cause}" for name, cause in sorted(lost.items()))
    if all(all(row) for row in grid):
        reason = f"{why}: replaced by standby {', '.join(filled)}" if filled else why
        return Placement(grid=grid, layers=list(plan.layers), standby=standby, reason=reason)
    survivors = [[name for name in row if name] for row in grid]
    width = min(len(row) for row in survivors)
    if width == 0:
        raise RuntimeError(f"{why}: a stage has no live peer and no standby is left; waiting for peers to join")
    new_grid = [row[:width] for row in survivors]
    standby += [name for row in survivors for name in row[width:]]
    reason = f"{why}: grid shrinks to {len(grid)} x {width}" + (f", standby {', '.join(standby)}" if standby else "")
    return Placement(grid=new_grid, layers=list(plan.layers), standby=standby, reason=reason)


def grow(plan: PlanRecord, live: set[str], target_replicas: int, steps_since_change: int) -> Placement | None:
    """A plan with one more pipeline replica from standby peers, or None (hysteresis says wait)."""
    standby = [name for name in plan.standby if name in live]
    if steps_since_change < MIN_STEPS_BETWEEN_CHANGES or plan.replicas >= target_replicas:
        return None
    if len(standby) < plan.stages:
        return None
    added, rest = standby[:plan.stages], standby[plan.stages:]
    grid = [row + [added[s]] for s, row in enumerate(plan.grid)]
    reason = (f"{', '.join(added)} fill replica {plan.replicas}: grid grows to {plan.stages} x {plan.replicas + 1} "
              f"(throughput x{(plan.replicas + 1) / plan.replicas:.2f})")
    return Placement(grid=grid, layers=list(plan.layers), standby=rest, reason=reason)


def assign_sources(grid: list[list[str]], previous: PlanRecord | None, live: set[str], origin: str) -> dict[str, str]:
    """Where each cell's peer gets its stage state (see the module docstring).

    origin: "init" (fresh run: every cell initialises from the seed), "checkpoint" (a resumed
    coordinator: everyone loads the checkpoint) or "continue" (the previous plan's live holders
    of a stage are at the last committed step and keep or donate it).
    """
    if origin in ("init", "checkpoint"):
        return {name: origin for row in grid for name in row}
    sources: dict[str, str] = {}
    for stage, row in enumerate(grid):
        holders = [] if previous is None else [name for name in previous.grid[stage] if name in live]
        donors = cycle(holders) if holders else None
        for name in row:
            if name in holders:
                sources[name] = "keep"
            elif donors is not None:
                sources[name] = f"peer:{next(donors)}"
            else:
                sources[name] = "checkpoint"
    return sources


def _bits(codec: str) -> int:
    digits = "".join(ch for ch in codec.split("@")[0] if ch.isdigit())
    if codec.startswith("q") and digits:
        return int(digits)
    return 16 if codec in ("fp16", "bf16") else 32  # "none" and codecs the cost model does not know
