"""Incremental re-planning: keep the running plan, patch it, and move as few peers as possible.

A peer that changes stage (or whose stage's layer range changes) must download that stage's
state, and a newcomer always must: those are the moved peers, the price of a new plan. Re-planning
1. keeps the current shape when the devices still fill it (drops whole pipelines otherwise),
2. refills the holes left by departed peers with the spare device that costs least,
3. compares with a fresh plan and, only when the patched plan is more than `tolerance` worse,
   runs the local search from the patched plan until it is within tolerance (each accepted swap
   moves at most two peers, so few moves are made),
4. also considers the fresh plan, reversed or not, with its stages renumbered to overlap the
   current ones most, and returns, of the plans within tolerance, the one that moves fewest peers.
This is the hysteresis the coordinator needs: small changes never reshuffle the swarm.
"""
from __future__ import annotations

import time

import numpy as np

from swarm.scheduler.cost import CostModel, Grid
from swarm.scheduler.cost import cost_model as make_model
from swarm.scheduler.plan import Plan
from swarm.scheduler.scenario import Scenario
from swarm.scheduler.search import Candidate, refine, search, to_plan
from swarm.scheduler.workload import Layers

__all__ = ["replan", "moved_peers"]

HOLE_CANDIDATES = 32  # spare devices tried per hole; more only slows a 10,000-peer swarm


def replan(scenario: Scenario, current: Plan, seed: int = 0, time_limit: float = 10.0,
           cost_model: str = "full", tolerance: float | None = 0.05) -> tuple[Plan, int]:
    """A valid plan for `scenario` (the swarm as it is now) close to `current`, and its moved peers.

    `scenario` lists the live devices with their current speeds; devices of `current` missing
    from it have left. With `tolerance=None` the fresh-plan comparison is skipped (fast path
    for huge simulated swarms). Example, after a peer left:
        new_plan, moved = replan(scenario.with_devices(alive), old_plan, time_limit=1.0)
    """
    deadline = time.monotonic() + time_limit
    rng = np.random.default_rng(seed)
    patched = _patch(scenario, current, cost_model, rng)
    if tolerance is None and patched is not None:
        return _finish(patched, current)
    fresh = search(scenario, cost_model, seed, max(0.0, (deadline - time.monotonic()) / 2))
    if tolerance is None:
        return _finish(fresh, current)
    target = (1 + tolerance) * fresh.score
    flipped = _priced(fresh.model, fresh.grid[::-1], fresh.layers[::-1])  # pipelines reversed
    options = [fresh, flipped, _aligned(fresh, current), _aligned(flipped, current)]
    if patched is not None:
        if patched.score > target:
            patched = refine(patched, rng, deadline, target=target, move_layers=False)
        options.append(patched)
    plans = [(to_plan(c), c.score) for c in options]
    within = [(len(moved_peers(current, p)), score, p) for p, score in plans if score <= target]
    moved, _, best = min(within, key=lambda item: item[:2])  # `fresh` is always within
    return best, moved


def moved_peers(old: Plan, new: Plan) -> list[str]:
    """Peers of `new` that must fetch state: newcomers, stage changers, changed layer ranges."""
    def ranges(p: Plan) -> dict[str, tuple[int, int]]:
        edges = np.concatenate([[0], np.cumsum(p.layers)])
        return {d: (int(edges[s]), int(edges[s + 1])) for d, s in p.stage_of().items()}

    before, after = ranges(old), ranges(new)
    return [device for device in new.devices if before.get(device) != after[device]]


def _finish(candidate: Candidate, current: Plan) -> tuple[Plan, int]:
    new = to_plan(candidate)
    return new, len(moved_peers(current, new))


def _aligned(fresh: Candidate, current: Plan) -> Candidate:
    """`fresh` with its stage groups renumbered to overlap the current stages most (greedy).

    Stage groups are interchangeable apart from their layer counts, which travel with them; the
    renumbered plan is re-priced, since the first and last stage hold the embeddings.
    """
    if fresh.grid.shape[0] != current.stages:
        return fresh
    ids = [d.id for d in fresh.model.scenario.devices]
    old_stage = current.stage_of()
    stages = current.stages
    overlap = np.zeros((stages, stages), dtype=np.int64)
    for k, row in enumerate(fresh.grid):
        for device in row:
            if ids[device] in old_stage:
                overlap[k, old_stage[ids[device]]] += 1
    order = np.full(stages, -1)
    free = set(range(stages))
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        k, s = divmod(int(flat), stages)
        if order[s] < 0 and k in free:
            order[s] = k
            free.remove(k)
    grid, model = fresh.grid[order], fresh.model
    splits = [fresh.layers[order]]
    if sum(current.layers) == model.scenario.model.layers:
        splits.append(np.array(current.layers, dtype=np.int64))  # nobody's layer range changes
    return min((_priced(model, grid, layers) for layers in splits), key=lambda c: c.score)


def _priced(model: CostModel, grid: Grid, layers: Layers) -> Candidate:
    grid, layers = np.ascontiguousarray(grid), np.ascontiguousarray(layers)
    return Candidate(model, grid, layers, model.score(grid, layers))


def _patch(scenario: Scenario, current: Plan, cost_model: str, rng: np.random.Generator) -> Candidate | None:
    """The current plan with departed peers' places refilled, or None if the shape cannot be kept."""
    index = scenario.index
    stages, replicas, n = current.stages, current.replicas, len(scenario.devices)
    if sum(current.layers) != scenario.model.layers or n < stages:
        return None
    grid = np.array([[index.get(d, -1) for d in row] for row in current.grid], dtype=np.int64)
    keep_replicas = min(replicas, n // stages)
    if scenario.parallelism is not None:
        keep_replicas = min(keep_replicas, scenario.parallelism.replicas)
    holes_per_column = (grid < 0).sum(axis=0)
    columns = np.sort(np.argsort(holes_per_column, kind="stable")[:keep_replicas])
    grid = grid[:, columns]
    model = make_model(cost_model, scenario, stages, keep_replicas)
    layers = np.array(current.layers, dtype=np.int64)
    holes = list(zip(*np.nonzero(grid < 0), strict=True))
    used = np.zeros(n, dtype=bool)
    used[grid[grid >= 0]] = True
    spare = list(np.flatnonzero(~used))  # at least len(holes): the kept columns fit in n devices
    for s, r in holes:
        grid[s, r] = spare.pop()
    dp = model.data_parallel(grid, layers)
    for s, r in holes:
        options = [grid[s, r]] + list(rng.permutation(spare)[:HOLE_CANDIDATES])
        scores = []
        for device in options:
            grid[s, r] = device
            dp[s] = model.data_parallel(grid, layers, [s])[0]
            scores.append(model.total(grid, layers, dp)[0])
        best = options[int(np.argmin(scores))]
        if best != options[0]:
            spare[spare.index(best)] = options[0]
        grid[s, r] = best
        dp[s] = model.data_parallel(grid, layers, [s])[0]
    return _priced(model, grid, layers)
