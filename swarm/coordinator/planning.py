"""From live peer records to plans: the scheduler places the swarm, first and after every change.

The first plan comes from the scheduler (`swarm.scheduler.plan`) on a scenario built from the
peers' measured TFLOPS, memory and links. Every later plan comes from the scheduler's incremental
`replan` on the live records, which keeps the running plan and moves as few peers as it can:

- refill: members that left or died are replaced by the spare peers that cost least; too few
  peers drop whole pipeline replicas (the patch path, `tolerance=None`).
- growth (hysteresis): standby peers are brought in only when they fill a whole new pipeline
  replica, and not sooner than `MIN_STEPS_BETWEEN_CHANGES` after the last change, so a peer that
  flaps never makes the swarm thrash.

The live state transfer moves a stage's state between peers but cannot re-split layers, so every
re-plan keeps the current layer split. Each plan carries its reason (who joined or left, the grid
change, the peers that move; the coordinator adds the predicted cost). Each cell gets a state
source: "keep", "peer:NAME" (donors spread round-robin over the stage's live holders),
"checkpoint" (no live holder) or "init" (first plan of a fresh run).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle
from typing import Any

from models.config import get_config
from peers.protocol import PeerRecord, PlanRecord
from swarm.scheduler import Plan, Scenario, moved_peers, predict, replan
from swarm.scheduler import plan as schedule

__all__ = ["Placement", "MIN_STEPS_BETWEEN_CHANGES", "scenario_from_records", "first_placement",
           "refill", "growth_target", "grow", "to_scheduler_plan", "assign_sources", "predicted_step_s"]

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
        return predict(scenario, to_scheduler_plan(placement), "full").iteration_s
    except ValueError:  # the scheduler's ScenarioError / PlanError: e.g. a peer without a record
        return None


def refill(plan: PlanRecord, live: dict[str, PeerRecord], lost: dict[str, str], hyper: dict[str, Any],
           codecs: dict[str, str], seed: int = 0) -> Placement:
    """The scheduler's `replan` after `lost` members (name -> why) left: holes refilled, layers kept.

    `live`: the records of every peer that can take a cell (survivors and standby). The patch
    path (`tolerance=None`) keeps the grid's shape and layer split, refills each hole with the
    spare peer that costs least, and drops whole pipeline replicas when too few peers are left.
    """
    why = "; ".join(f"{name} {cause}" for name, cause in sorted(lost.items()))
    survivors = {name: record for name, record in live.items() if name not in lost}
    if len(survivors) < plan.stages:
        raise RuntimeError(f"{why}: {len(survivors)} live peers cannot fill {plan.stages} stages; "
                           "waiting for peers to join")
    scenario = scenario_from_records(survivors, hyper, codecs, None, plan.replicas)
    new, _ = replan(scenario, to_scheduler_plan(plan), seed=seed, time_limit=1.0, tolerance=None)
    if list(new.layers) != list(plan.layers):
        raise RuntimeError(f"{why}: the scheduler could not keep the layer split {plan.layers}; "
                           "waiting for peers to join")
    return _placement(plan, new, survivors, why)


def growth_target(plan: PlanRecord, live: dict[str, PeerRecord], target_replicas: int, steps_since_change: int,
                  hyper: dict[str, Any]) -> int | None:
    """The replica count to try growing to, or None; cheap, so the coordinator asks every step.

    Hysteresis: nothing sooner than `MIN_STEPS_BETWEEN_CHANGES` after the last change, and only
    when the live peers fill at least one whole new replica that --batch splits evenly over.
    """
    if steps_since_change < MIN_STEPS_BETWEEN_CHANGES or plan.replicas >= target_replicas:
        return None
    most = min(target_replicas, len(live) // plan.stages)
    fits = [r for r in range(most, plan.replicas, -1) if hyper["batch"] % (r * hyper["micro_batches"]) == 0]
    return fits[0] if fits else None


def grow(plan: PlanRecord, live: dict[str, PeerRecord], replicas: int, hyper: dict[str, Any],
         codecs: dict[str, str], seed: int = 0) -> Placement | None:
    """The scheduler's `replan` for `replicas` pipeline replicas of the live peers, or None if it
    finds the current grid good enough. The new plan keeps the current layer split: the live
    swarm moves a stage's state between peers but cannot re-split it.
    """
    scenario = scenario_from_records(live, hyper, codecs, plan.stages, replicas)
    new, _ = replan(scenario, to_scheduler_plan(plan), seed=seed, time_limit=1.0)
    if new.stages != plan.stages or new.replicas <= plan.replicas:
        return None
    if list(new.layers) != list(plan.layers):
        new = Plan(new.scenario, new.grid, tuple(plan.layers))  # pin the split the peers' state has
    added = sorted(set(new.devices) - set(plan.members()))
    return _placement(plan, new, live, f"{', '.join(added)} join the grid")


def to_scheduler_plan(plan: PlanRecord | Placement) -> Plan:
    """The scheduler's view of a plan or placement (grid and layers; device ids are peer names)."""
    return Plan("live", tuple(tuple(row) for row in plan.grid), tuple(plan.layers))


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


def _placement(old: PlanRecord, new: Plan, live: dict[str, PeerRecord], why: str) -> Placement:
    """`new` as a placement, its reason naming the cause, the grid change and the peers it moves."""
    moved = moved_peers(to_scheduler_plan(old), new)
    grid = [list(row) for row in new.grid]
    standby = sorted(set(live) - set(new.devices))
    shape = (f"grid {old.stages} x {old.replicas} -> {new.stages} x {new.replicas}"
             if new.replicas != old.replicas else f"grid stays {new.stages} x {new.replicas}")
    reason = f"{why}: {shape}, {len(moved)} peers move" + (f" ({', '.join(moved)})" if moved else "")
    return Placement(grid=grid, layers=list(new.layers), standby=standby,
                     reason=reason + (f", standby {', '.join(standby)}" if standby else ""))


def _bits(codec: str) -> int:
    digits = "".join(ch for ch in codec.split("@")[0] if ch.isdigit())
    if codec.startswith("q") and digits:
        return int(digits)
    return 16 if codec in ("fp16", "bf16") else 32  # "none" and codecs the cost model does not know
