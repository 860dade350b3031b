"""`plan()`: the scheduler's search, and `predict()`, the cost of a given plan.

How it searches (and why it is fast at 1,024 devices):
1. Shapes: the scenario's S x R, or every S (with R = N // S) when `parallelism` is left open.
2. Starts: both locality plans (construct.py), each with an even and a speed-proportional layer
   split. Every shape is priced from its best start; a shape whose memory does not fit drops out.
3. Refinement: the three best shapes get an iterated local search (localsearch.py), each with
   the same work budget (`work_budget`). Every move is priced by the exact cost model.
Because the starts include both locality plans and the search never accepts a worse plan, the
result is never worse than either locality plan.

Determinism: the work is counted in cost evaluations, never in seconds, and sized so that even
1,024 devices finish in about half a minute on two busy cores. So one seed gives one plan on any
machine as long as the time limit is not reached; the limit is only a safety cap, and a search
that hits it returns what it has, which then depends on the machine's speed and load.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models import even_layers
from swarm.scheduler.construct import locality_dp, locality_pipeline, proportional_layers, shapes
from swarm.scheduler.cost import INFEASIBLE, Breakdown, CostModel, Grid
from swarm.scheduler.cost import cost_model as make_model
from swarm.scheduler.localsearch import LocalSearch
from swarm.scheduler.plan import Plan, PlanError
from swarm.scheduler.scenario import Scenario
from swarm.scheduler.workload import Layers

__all__ = ["plan", "predict", "Candidate", "search", "to_plan"]

REFINED_SHAPES = 3
MAX_PATIENCE = 20_000  # proposals without progress that end one local search run
RUNS = 3  # a shape's budget: about this many converged runs (the first, then kicked ones)
MAX_EVALS = 36_000  # per shape: 1,024 devices take ~10-25 s for all 3 shapes on 2 busy cores
KICK_FROM = 32  # devices; below this one local search run is enough


@dataclass
class Candidate:
    """A grid of device positions with its layer split, priced by `model`."""

    model: CostModel
    grid: Grid
    layers: Layers
    score: float

    def spare(self) -> npt.NDArray[np.int64]:
        """Positions of the scenario's devices the grid leaves out."""
        used = np.zeros(len(self.model.scenario.devices), dtype=bool)
        used[self.grid.ravel()] = True
        return np.flatnonzero(~used)


def plan(scenario: Scenario, cost_model: str = "full", seed: int = 0, time_limit: float = 30.0) -> Plan:
    """The best plan found for `scenario` under `cost_model` ("full" or "dtfm").

    The search does a fixed amount of work for the swarm's size (`work_budget`), so the same
    `seed` gives the same plan on any machine; `time_limit` (seconds) is only a safety cap: a
    search that reaches it stops early, and its plan then depends on the machine's speed and
    load. Small swarms take well under a second (8 peers: 0.1-0.5 s), 1,024 devices 15-30 s on two
    cores. Raises `PlanError` when no placement fits the devices' memory. Example:
        plan(Scenario.preset("dtfm-5"), "dtfm", seed=0, time_limit=10).save("plan.json")
    """
    return to_plan(search(scenario, cost_model, seed, time_limit))


def predict(scenario: Scenario, plan: Plan, cost_model: str = "full") -> Breakdown:
    """The cost model's breakdown of an existing plan (validated against the scenario first)."""
    plan.validate(scenario)
    model = make_model(cost_model, scenario, plan.stages, plan.replicas)
    return model.breakdown(plan.indices(scenario), np.array(plan.layers, dtype=np.int64))


def search(scenario: Scenario, cost_model: str, seed: int, time_limit: float,
           target: float | None = None) -> Candidate:
    """The search behind `plan()`, returning the raw candidate (used by re-planning too)."""
    deadline = time.monotonic() + time_limit
    rng = np.random.default_rng(seed)
    starts = sorted((_best_start(make_model(cost_model, scenario, s, r)) for s, r in shapes(scenario)),
                    key=lambda c: c.score)
    if starts[0].score >= INFEASIBLE:
        raise PlanError(_memory_hint(starts[0]))
    refined = [c for c in starts[:REFINED_SHAPES] if c.score < INFEASIBLE]
    best = refined[0]
    for k, start in enumerate(refined):
        share = (deadline - time.monotonic()) / (len(refined) - k)
        result = _arranged(refine(start, rng, time.monotonic() + share, target))
        if result.score < best.score:
            best = result
    return best


def work_budget(devices: int) -> tuple[int, int]:
    """(patience, evaluations) of one shape's refinement for a swarm of `devices` devices.

    Patience grows with the number of possible swaps (~n^2) up to `MAX_PATIENCE`; the budget is
    `RUNS` converged runs, capped at `MAX_EVALS`, so 1,024 devices stay well inside a minute.
    """
    patience = int(min(max(300, 4 * devices * devices), MAX_PATIENCE))
    return patience, min(RUNS * patience, MAX_EVALS)


def refine(start: Candidate, rng: np.random.Generator, deadline: float, target: float | None = None,
           move_layers: bool = True) -> Candidate:
    """Iterated local search from `start` within `work_budget` evaluations.

    After each converged run the best grid gets a kick of a few random swaps and is searched
    again (swarms of `KICK_FROM` devices or more); the best grid seen is kept. Stops at the
    evaluation budget, at `target`, or at the deadline (the only machine-dependent stop).
    """
    n = len(start.model.scenario.devices)
    patience, budget = work_budget(n)
    walk = LocalSearch(start.model, start.grid, start.layers, start.spare(), rng, move_layers)
    walk.run(max_evals=budget, patience=patience, deadline=deadline, target=target)
    best = walk.state()
    if n < KICK_FROM:
        budget = walk.evals  # small swarms: one converged run is enough
    while walk.evals < budget and time.monotonic() < deadline and (target is None or best.score > target):
        walk.kick(max(2, walk.grid.size // 16))
        walk.run(max_evals=budget, patience=patience, deadline=deadline, target=target)
        if walk.score < best.score:
            best = walk.state()
        else:
            walk.restore(best)
    return Candidate(start.model, best.grid, best.layers, best.score)


def to_plan(candidate: Candidate) -> Plan:
    """The candidate as a Plan with its predicted breakdown."""
    model = candidate.model
    ids = [d.id for d in model.scenario.devices]
    breakdown = model.breakdown(candidate.grid, candidate.layers)
    grid = tuple(tuple(ids[i] for i in row) for row in candidate.grid)
    return Plan(model.scenario.name, grid, tuple(int(n) for n in candidate.layers),
                breakdown.to_dict(), model.name)


def _best_start(model: CostModel) -> Candidate:
    scenario, stages = model.scenario, model.stages
    starts = []
    for grid in (locality_dp(scenario, stages, model.replicas),
                 locality_pipeline(scenario, stages, model.replicas)):
        speed = model.flops[grid].min(axis=1)
        for layers in (np.asarray(even_layers(scenario.model.layers, stages), dtype=np.int64),
                       proportional_layers(scenario.model.layers, speed)):
            starts.append(_arranged(Candidate(model, grid, layers, model.score(grid, layers))))
    return min(starts, key=lambda c: c.score)


def _arranged(candidate: Candidate) -> Candidate:
    """The candidate in its cost model's arrangement (dtfm: DT-FM's matching and stage order)."""
    model = candidate.model
    grid = model.arrange(candidate.grid, candidate.layers)
    if grid is candidate.grid:
        return candidate
    return Candidate(model, grid, candidate.layers, model.score(grid, candidate.layers))


def _memory_hint(candidate: Candidate) -> str:
    """Why the least-bad placement does not fit: its worst device, and what takes the memory."""
    model, grid = candidate.model, candidate.grid
    work = model.work
    need = work.memory_bytes(candidate.layers)[:, None] + np.zeros(grid.shape)
    s, r = np.unravel_index(int(np.argmax(need - model.memory[grid])), grid.shape)
    stash = work.stash_bytes() / 1e9
    return (f"no placement fits device memory: in the best shape ({model.stages} stages x "
            f"{model.replicas} replicas) stage {s} needs {need[s, r] / 1e9:.3g} GB ({stash:.3g} GB "
            f"of it the stashed inputs of {work.micro_batches} micro-batches) but device "
            f"{model.scenario.devices[grid[s, r]].id!r} has {model.memory[grid[s, r]] / 1e9:.3g} GB; "
            f"add devices or devices with more memory, or lower batch.global_sequences")
