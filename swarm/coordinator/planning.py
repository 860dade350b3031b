"""From live peer records to plans: the scheduler places the swarm, first and after every change.

The first plan comes from the scheduler (`swarm.scheduler.plan`) on a scenario built from the
peers' measured TFLOPS, memory, codec speed and links, and the commit round trip they measured
(`control_section`). Every later plan comes from the scheduler's incremental
`replan` on the live records, which keeps the running plan and moves as few peers as it can:

- refill: members that left or died are replaced by the spare peers that cost least; too few
  peers drop whole pipeline replicas (the patch path, `tolerance=None`).
- growth (hysteresis): standby peers are brought in only when they fill a whole new pipeline
  replica, and not sooner than `MIN_STEPS_BETWEEN_CHANGES` after the last change, so a peer that
  flaps never makes the swarm thrash.

- re-split (elastic layers): when the swarm's compute changed (a fast peer joined, a slow one is
  in the grid), the scheduler's plan of the same shape may move layers and peers; it is taken only
  when the cost model predicts a step at least `RESPLIT_GAIN` shorter. Its cells assemble their
  layers from the old stages' holders (`SourceKind.LAYERS`, `Resplit`); repairs and growth keep
  the current split. Each plan carries its `PlanReason` (who joined or left, the
grid change, the peers that move; the coordinator adds the predicted cost). Each cell gets a
`StateSource`: keep, a donor peer (spread round-robin over the stage's live holders), the
checkpoint (no live holder) or init (first plan of a fresh run, or a stage that lost every holder
before the first checkpoint: it starts over from the seed).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import cycle
from typing import Any

from models.config import get_config
from peers.protocol import (
    Codecs,
    Departure,
    PeerRecord,
    PlanChange,
    PlanReason,
    PlanRecord,
    Resplit,
    SourceKind,
    StateSource,
    TrainingSpec,
)
from swarm.scheduler import Plan, Scenario, moved_peers, predict, replan
from swarm.scheduler import plan as schedule

__all__ = ["Placement", "MIN_STEPS_BETWEEN_CHANGES", "scenario_from_records", "first_placement",
           "describe_losses", "describe_reason", "fit_batch", "refill", "growth_target", "grow", "to_scheduler_plan",
           "assign_sources",
           "Holders", "stage_holders", "restart_lost_stages", "resplit", "plan_sources", "RESPLIT_GAIN", "transfers",
           "predicted_step_s", "scenario_job", "control_section", "DEFAULT_COMMIT_S", "plan_donors"]

MIN_STEPS_BETWEEN_CHANGES = 3
RESPLIT_GAIN = 0.2  # a re-split moves state and resets codec memories: only for a clearly shorter step
_DEFAULT_LINK = (1.0, 1.0)  # (Gbit/s, ms) for a pair nobody measured
# The prepared -> commit round trip before any peer has measured one. Nobody measures the latency to
# the coordinator itself, so this is a LAN's round trip plus both ends' handling.
DEFAULT_COMMIT_S = 0.002


@dataclass
class Placement:
    """A grid, its layer split, the peers left over, and why it looks like this."""

    grid: list[list[str]]
    layers: list[int]
    standby: list[str]
    reason: PlanReason


def scenario_from_records(records: dict[str, PeerRecord], training: TrainingSpec, codecs: Codecs,
                          stages: int | None, replicas: int | None) -> Scenario:
    """A scheduler scenario with one site per peer and the links they measured."""
    measured = {(name, peer): (link.bandwidth_gbps, link.latency_ms)
                for name, record in records.items() for peer, link in record.links.items() if peer in records}
    devices = [{"id": n, "tflops": max(records[n].tflops, 1e-6), "memory_gb": max(records[n].memory_gb, 1e-3),
                **({} if records[n].codec_gvalues is None else {"codec_gvalues": records[n].codec_gvalues})}
               for n in sorted(records)]
    parallelism = {"stages": stages, "replicas": replicas} if stages is not None and replicas is not None else None
    model, batch, compression = scenario_job(training, codecs, replicas or 1)
    control = control_section(r.breakdown.commit_s for r in records.values() if r.breakdown is not None)
    return Scenario.from_measurements("live", devices, measured, model=model, batch=batch, compression=compression,
                                      parallelism=parallelism, fallback=_DEFAULT_LINK, control=control)


def control_section(commits: Iterable[float]) -> dict[str, float]:
    """A scenario's `control` section: the shortest prepared -> commit wait (`StepBreakdown.commit_s`) the
    peers measured on the last step they applied, or DEFAULT_COMMIT_S before any has. The shortest is
    the last member to prepare, whose wait is the round trip alone: the others' also hold the stages'
    skew, which the model prices in the all-reduce's end already."""
    measured = list(commits)
    return {"commit_s": min(measured) if measured else DEFAULT_COMMIT_S}


def scenario_job(training: TrainingSpec, codecs: Codecs, replicas: int) -> tuple[dict[str, Any], ...]:
    """The `model`, `batch` and `compression` sections of a scenario for this run on `replicas` replicas."""
    model = get_config(training.model)
    micro = max(1, training.batch // (replicas * training.micro_batches))
    return ({"layers": model.layers, "d_model": model.d_model, "heads": model.heads, "seq_len": model.context,
             "vocab": model.vocab},
            {"global_sequences": training.batch, "micro_sequences": micro},
            {"forward": codecs.forward, "backward": codecs.backward, "gradient": codecs.gradient})


def first_placement(records: dict[str, PeerRecord], scenario: Scenario, seed: int) -> Placement:
    """The scheduler's plan for the announced peers; peers it leaves out are standby."""
    planned = schedule(scenario, cost_model="full", seed=seed, time_limit=5.0)
    grid = [list(row) for row in planned.grid]
    used = {name for row in grid for name in row}
    standby = sorted(set(records) - used)
    predicted = planned.predicted.get("iteration_s")
    text = f"first plan: {len(grid)} stages x {len(grid[0])} replicas from {len(records)} peers by the scheduler"
    reason = PlanReason(PlanChange.FIRST, text, joined=sorted(records), predicted_step_s=predicted)
    return Placement(grid=grid, layers=[int(n) for n in planned.layers], standby=standby, reason=reason)


def fit_batch(placement: Placement, training: TrainingSpec) -> Placement:
    """Drop replicas until the global batch splits evenly over replicas x micro-batches."""
    width = len(placement.grid[0])
    while width > 1 and training.batch % (width * training.micro_batches):
        width -= 1
    if width < len(placement.grid[0]):
        placement.standby += [n for row in placement.grid for n in row[width:]]
        placement.grid = [row[:width] for row in placement.grid]
        placement.reason.text += f"; {width} replicas so that --batch {training.batch} splits evenly"
    return placement


def predicted_step_s(placement: PlanRecord | Placement, records: dict[str, PeerRecord], training: TrainingSpec,
                     codecs: Codecs) -> float | None:
    """The scheduler's cost model's seconds per step for `placement` (None if it cannot price it)."""
    members = {n: records[n] for row in placement.grid for n in row if n in records}
    replicas = len(placement.grid[0])
    try:
        scenario = scenario_from_records(members, training, codecs, None, replicas)
        return predict(scenario, to_scheduler_plan(placement), "full").iteration_s
    except ValueError:  # the scheduler's ScenarioError / PlanError: e.g. a peer without a record
        return None


def describe_losses(lost: dict[str, Departure]) -> str:
    """"b left; c stopped heartbeating (record expired)": the departures as a person reads them."""
    return "; ".join(f"{name} {cause.describe()}" for name, cause in sorted(lost.items()))


def describe_reason(reason: PlanReason) -> str:
    """A plan's reason as the event line shows it: the text plus the predicted step time."""
    predicted = "" if reason.predicted_step_s is None else f" (predicted {reason.predicted_step_s:.3g} s/step)"
    return reason.text + predicted


def refill(plan: PlanRecord, live: dict[str, PeerRecord], lost: dict[str, Departure], training: TrainingSpec,
           codecs: Codecs, seed: int = 0) -> Placement:
    """The scheduler's `replan` after `lost` members left: holes refilled, layers kept.

    `live`: the records of every peer that can take a cell (survivors and standby). The patch
    path (`tolerance=None`) keeps the grid's shape and layer split, refills each hole with the
    spare peer that costs least, and drops whole pipeline replicas when too few peers are left.
    """
    why = describe_losses(lost)
    survivors = {name: record for name, record in live.items() if name not in lost}
    if len(survivors) < plan.stages:
        raise RuntimeError(f"{why}: {len(survivors)} live peers cannot fill {plan.stages} stages; "
                           "waiting for peers to join")
    scenario = scenario_from_records(survivors, training, codecs, None, plan.replicas)
    new, _ = replan(scenario, to_scheduler_plan(plan), seed=seed, time_limit=1.0, tolerance=None)
    if list(new.layers) != list(plan.layers):
        raise RuntimeError(f"{why}: the scheduler could not keep the layer split {plan.layers}; "
                           "waiting for peers to join")
    return _placement(plan, new, survivors, PlanReason(PlanChange.REPAIRED, why, lost=dict(lost)))


def resumed_placement(old: PlanRecord, origin: str, ready: dict[str, PeerRecord], training: TrainingSpec,
                      codecs: Codecs) -> Placement | None:
    """A resumed coordinator's first placement: plan `old` (the checkpoint's, or the last one the live
    peers follow; `origin` says which, for the reason), refilled where its peers are not back; None
    while some stage has nobody."""
    missing = {name: Departure.NOT_BACK for name in old.members() if name not in ready}
    try:
        placement = (refill(old, ready, missing, training, codecs, training.seed) if missing
                     else Placement([list(row) for row in old.grid], list(old.layers),
                                    sorted(set(ready) - set(old.members())),
                                    PlanReason(PlanChange.RESUMED, "every peer of its plan is back")))
    except (RuntimeError, ValueError):  # the scheduler's ScenarioError / PlanError: a stage has nobody
        return None
    placement.reason.change = PlanChange.RESUMED
    placement.reason.text = f"resumed from {origin}: {placement.reason.text}"
    return placement


def growth_target(plan: PlanRecord, live: dict[str, PeerRecord], target_replicas: int, steps_since_change: int,
                  training: TrainingSpec) -> int | None:
    """The replica count to try growing to, or None; cheap, so the coordinator asks every step.

    Hysteresis: nothing sooner than `MIN_STEPS_BETWEEN_CHANGES` after the last change, and only
    when the live peers fill at least one whole new replica that --batch splits evenly over.
    """
    if steps_since_change < MIN_STEPS_BETWEEN_CHANGES or plan.replicas >= target_replicas:
        return None
    most = min(target_replicas, len(live) // plan.stages)
    fits = [r for r in range(most, plan.replicas, -1) if training.batch % (r * training.micro_batches) == 0]
    return fits[0] if fits else None


def grow(plan: PlanRecord, live: dict[str, PeerRecord], replicas: int, training: TrainingSpec,
         codecs: Codecs, seed: int = 0) -> Placement | None:
    """The scheduler's `replan` for `replicas` pipeline replicas of the live peers, or None if it
    finds the current grid good enough. The new plan keeps the current layer split: the live
    swarm moves a stage's state between peers but cannot re-split it.
    """
    scenario = scenario_from_records(live, training, codecs, plan.stages, replicas)
    new, _ = replan(scenario, to_scheduler_plan(plan), seed=seed, time_limit=1.0)
    if new.stages != plan.stages or new.replicas <= plan.replicas:
        return None
    if list(new.layers) != list(plan.layers):
        new = Plan(new.scenario, new.grid, tuple(plan.layers))  # pin the split the peers' state has
    added = sorted(set(new.devices) - set(plan.members()))
    return _placement(plan, new, live, PlanReason(PlanChange.GROWN, f"{', '.join(added)} join the grid", joined=added))


def resplit(plan: PlanRecord, live: dict[str, PeerRecord], training: TrainingSpec, codecs: Codecs,
            seed: int = 0) -> Placement | None:
    """The scheduler's plan of the same grid shape over the live peers, if it moves layers or peers and
    its predicted step is at least `RESPLIT_GAIN` shorter than the current plan's; else None."""
    scenario = scenario_from_records(live, training, codecs, plan.stages, plan.replicas)
    current = to_scheduler_plan(plan)
    new, _ = replan(scenario, current, seed=seed, time_limit=1.0)
    same = (new.grid, tuple(new.layers)) == (current.grid, tuple(current.layers))
    if same or (new.stages, new.replicas) != (plan.stages, plan.replicas):
        return None
    before, after = predict(scenario, current, "full").iteration_s, predict(scenario, new, "full").iteration_s
    if after > (1 - RESPLIT_GAIN) * before:
        return None
    moved = f"layers {plan.layers} -> {list(new.layers)}" if list(new.layers) != list(plan.layers) else "peers move"
    text = f"{moved}, predicted {before:.3g} -> {after:.3g} s/step"
    return _placement(plan, new, live, PlanReason(PlanChange.RESPLIT, text, predicted_step_s=after))


def plan_sources(grid: list[list[str]], layers: list[int], previous: PlanRecord | None, holders: Holders | None,
                 origin: SourceKind | None) -> tuple[dict[str, StateSource], Resplit | None]:
    """Each cell's `StateSource` (see `assign_sources`), and for a plan that changes the layer split of
    `previous`, where its cells fetch their layers: a stage whose layer range is unchanged is kept by
    its holders, every other cell assembles its layers from the old stages' holders."""
    if previous is None or origin is not None or list(layers) == list(previous.layers):
        return assign_sources(grid, holders, origin), None
    if holders is None or not all(holders.names):
        raise ValueError(f"cannot re-split layers {previous.layers} -> {layers}: an old stage has no holder")
    old_ranges, new_ranges = _ranges(previous.layers), _ranges(layers)
    sources = {name: StateSource(SourceKind.KEEP) if stage < len(old_ranges) and new_ranges[stage] == old_ranges[stage]
               and name in holders.names[stage] else StateSource(SourceKind.LAYERS)
               for stage, row in enumerate(grid) for name in row}
    return sources, Resplit(layers=list(previous.layers), holders=holders.names, checksums=holders.checksums)


def plan_donors(sources: dict[str, StateSource], resplit: Resplit | None) -> list[str]:
    """Every peer a plan's cells fetch state from, members or not: the plan must list their addresses."""
    named = {source.donor for source in sources.values() if source.donor}
    return sorted(named | set(resplit.donors() if resplit else []))


def transfers(sources: dict[str, StateSource], resplit: Resplit | None) -> list[tuple[str, str]]:
    """The (cell, donor) pairs a plan's state may travel between: each cell that loads from peers, with
    every donor the plan names (a fetch falls back from one donor to the next)."""
    fetching = [name for name, source in sources.items() if source.kind in (SourceKind.PEER, SourceKind.LAYERS)]
    donors = plan_donors(sources, resplit)
    return [(name, donor) for name in fetching for donor in donors]


def _ranges(layers: list[int]) -> list[tuple[int, int]]:
    """(first layer, layer count) of each stage of a split."""
    return [(sum(layers[:stage]), count) for stage, count in enumerate(layers)]


def to_scheduler_plan(plan: PlanRecord | Placement) -> Plan:
    """The scheduler's view of a plan or placement (grid and layers; device ids are peer names)."""
    return Plan("live", tuple(tuple(row) for row in plan.grid), tuple(plan.layers))


@dataclass
class Holders:
    """Who holds each stage at the committed step: `names[s]`, and the parameter checksum they agree
    on (`checksums[s]`, "" while none has announced one)."""

    names: list[list[str]]
    checksums: list[str]


def stage_holders(previous: PlanRecord, records: dict[str, PeerRecord], committed_step: int,
                  committed_version: int, live: set[str]) -> Holders:
    """The replicas of `previous` that hold their stage at `committed_step`, by their own records.

    A holder announces that stage (a peer that failed to take up its cell announces none), and either
    applied the committed step or prepared it under `committed_version` (it applies it before taking
    up the next plan). Where most holders that announced a checksum announced the same one, it is the
    stage's, and a holder that announced another one diverged and is no holder (it is re-synced from
    one that agrees); without such a majority (one against one) the stage stays unverified.
    """
    names: list[list[str]] = []
    checksums: list[str] = []
    for stage, row in enumerate(previous.grid):
        holding = [name for name in row if name in live and _holds(records[name], stage, committed_step,
                                                                      committed_version)]
        announced = Counter(records[name].param_checksum for name in holding
                            if records[name].step == committed_step and records[name].param_checksum)
        top = announced.most_common(1)
        agreed = top[0][0] if top and 2 * top[0][1] > sum(announced.values()) else ""
        names.append([name for name in holding if not agreed or records[name].step != committed_step
                      or records[name].param_checksum == agreed])
        checksums.append(agreed)
    return Holders(names, checksums)


def _holds(record: PeerRecord, stage: int, committed_step: int, committed_version: int) -> bool:
    if record.stage != stage:
        return False
    return record.step == committed_step or (record.prepared_step, record.prepared_version) == (
        committed_step, committed_version)


def assign_sources(grid: list[list[str]], holders: Holders | None, origin: SourceKind | None,
                   ) -> dict[str, StateSource]:
    """Where each cell's peer gets its stage state (see the module docstring).

    origin: `SourceKind.INIT` (fresh run: every cell initialises from the seed) or
    `SourceKind.CHECKPOINT` (a resumed coordinator: everyone loads the checkpoint) for every cell;
    None to continue: a stage's holders (`stage_holders`) keep or donate it, and a stage without
    one restores from the checkpoint.
    """
    if origin is not None:
        return {name: StateSource(origin) for row in grid for name in row}
    sources: dict[str, StateSource] = {}
    for stage, row in enumerate(grid):
        holding = [] if holders is None else holders.names[stage]
        donors = cycle(holding) if holding else None
        for name in row:
            if name in holding:
                sources[name] = StateSource(SourceKind.KEEP)
            elif donors is not None:
                sources[name] = StateSource(SourceKind.PEER, next(donors))
            else:
                sources[name] = StateSource(SourceKind.CHECKPOINT)
    return sources


def restart_lost_stages(grid: list[list[str]], sources: dict[str, StateSource],
                        ) -> tuple[dict[str, StateSource], list[int]]:
    """With no checkpoint yet, stages whose every cell must restore from one start over from the seed
    instead (the other stages keep their state): the sources, and the stages restarted."""
    lost = [stage for stage, row in enumerate(grid) if all(sources[n].kind is SourceKind.CHECKPOINT for n in row)]
    restarted = {name: StateSource(SourceKind.INIT) for stage in lost for name in grid[stage]}
    return {**sources, **restarted}, lost


def _placement(old: PlanRecord, new: Plan, live: dict[str, PeerRecord], reason: PlanReason) -> Placement:
    """`new` as a placement, its reason's text naming the grid change and the peers it moves."""
    moved = moved_peers(to_scheduler_plan(old), new)
    grid = [list(row) for row in new.grid]
    standby = sorted(set(live) - set(new.devices))
    shape = (f"grid {old.stages} x {old.replicas} -> {new.stages} x {new.replicas}"
             if new.replicas != old.replicas else f"grid stays {new.stages} x {new.replicas}")
    reason.text += f": {shape}, {len(moved)} peers move" + (f" ({', '.join(moved)})" if moved else "")
    reason.text += f", standby {', '.join(standby)}" if standby else ""
    return Placement(grid=grid, layers=list(new.layers), standby=standby, reason=reason)
