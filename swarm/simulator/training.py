"""A training run of a planned swarm over many steps, with stragglers, churn and re-planning.

Churn is a Poisson process: peers leave at `churn_per_hour` (any live peer, uniformly) and as
many join (a copy of a random live peer's profile: same site, GPU and uplink). A planned peer
leaving during a step aborts that step (its work is lost: no half-applied update) and the
coordinator re-plans at once; every other arrival and departure is applied at the next step
boundary, where the coordinator re-plans. After each re-plan every moved peer loads its
stage's state (14 bytes per parameter: fp16 weights, fp32 master copy, two Adam moments) from
replicas of that stage that stayed, and the swarm waits for the slowest download.
Re-planning is `swarm.scheduler.replan`; above `FRESH_CHECK_LIMIT` devices it skips the
comparison with a fresh plan (that search alone would dominate the simulated run's wall time).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec
import numpy as np

from swarm.scheduler import Device, Plan, Scenario, moved_peers, predict, replan
from swarm.scheduler.workload import Workload
from swarm.simulator.iteration import simulate_iteration

__all__ = ["StepRecord", "SimulationReport", "simulate", "FRESH_CHECK_LIMIT"]

FRESH_CHECK_LIMIT = 1024
MAX_INTERRUPTIONS = 50  # re-plans in a row without a committed step: churn outpaces training
STATE_BYTES_PER_PARAMETER = 14
DONORS = 4  # replicas a moved peer downloads its state from at once


@dataclass(frozen=True)
class StepRecord:
    """One committed training step of a simulated run."""

    step: int              # committed steps so far, this one included
    end_s: float           # simulated clock when the step committed
    seconds: float         # the step's own duration
    sequences_per_s: float
    devices: int           # devices in the plan
    predicted_s: float     # the full cost model's prediction for the plan it ran


@dataclass
class SimulationReport:
    """What a simulated run did: its committed steps, churn, re-plans and the time they cost."""

    steps: list[StepRecord] = field(default_factory=list)
    aborted_steps: int = 0
    left: int = 0
    joined: int = 0
    replans: int = 0
    moved_peers: int = 0
    stalled: bool = False         # churn left too few devices or outpaced every step: run stopped
    lost_s: float = 0.0           # time of aborted steps
    transfer_s: float = 0.0       # time waiting for moved peers' state
    events: int = 0

    @property
    def throughput(self) -> list[float]:
        """Sequences per second of each committed step, in order."""
        return [s.sequences_per_s for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report with totals (`effective_sequences_per_s` counts aborts and waits)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "steps"}
        data["steps"] = [dataclasses.asdict(s) for s in self.steps]
        total = self.steps[-1].end_s if self.steps else 0.0
        committed = sum(s.seconds for s in self.steps)
        data["simulated_s"] = total
        data["mean_step_s"] = committed / len(self.steps) if self.steps else 0.0
        data["mean_predicted_s"] = float(np.mean([s.predicted_s for s in self.steps])) if self.steps else 0.0
        # committed sequences over the whole simulated time: aborted steps and state loading included
        sequences = sum(s.sequences_per_s * s.seconds for s in self.steps)
        data["effective_sequences_per_s"] = sequences / total if total else 0.0
        return data


def simulate(scenario: Scenario, plan: Plan, steps: int, churn_per_hour: float = 0.0, seed: int = 0,
             jitter: float = 0.05, stragglers: float = 0.01, replan_time_limit: float = 2.0,
             progress: Callable[[StepRecord], None] | None = None) -> SimulationReport:
    """Run `steps` committed training steps of `plan` on `scenario` and report each one.

    `jitter`: log-normal sigma of every compute time. `stragglers`: per step, the chance that a
    device runs at half speed for that step. `progress` is called after every committed step.
    """
    plan.validate(scenario)
    rng = np.random.default_rng(seed)
    report = SimulationReport()
    devices = list(scenario.devices)
    churn = _Churn(churn_per_hour, rng)
    clock, changed, interruptions = 0.0, False, 0
    predicted = predict(scenario, plan, "full").iteration_s
    while len(report.steps) < steps:
        # between steps nothing is lost: apply every arrival and departure up to now
        changed |= churn.apply_until(clock, devices, report)
        if changed:
            interruptions += 1
            if len(devices) < plan.stages or interruptions > MAX_INTERRUPTIONS:
                report.stalled = True
                break
            new_scenario = scenario.with_devices(devices)
            tolerance = 0.05 if len(devices) <= FRESH_CHECK_LIMIT else None
            new_plan, _ = replan(new_scenario, plan, seed, replan_time_limit, "full", tolerance)
            moved = moved_peers(plan, new_plan)
            wait = _transfer_seconds(new_scenario, new_plan, moved)
            scenario, plan, changed = new_scenario, new_plan, False
            predicted = predict(scenario, plan, "full").iteration_s
            report.replans += 1
            report.moved_peers += len(moved)
            report.transfer_s += wait
            clock += wait
            if wait > 0:
                continue  # peers may have come and gone while state loaded
        slow = np.where(rng.random(len(scenario.devices)) < stragglers, 2.0, 1.0)
        result = simulate_iteration(scenario, plan.indices(scenario), np.array(plan.layers), rng, jitter, slow)
        report.events += result.events
        in_plan = set(plan.devices)
        while churn.next_leave < clock + result.seconds and not changed:
            changed = churn.leave(devices, report).id in in_plan
            if changed:  # the step loses its work; nothing half-applied
                report.aborted_steps += 1
                report.lost_s += churn.left_at - clock
                clock = churn.left_at
        if changed:
            continue
        interruptions = 0
        clock += result.seconds
        record = StepRecord(len(report.steps) + 1, float(clock), result.seconds,
                            scenario.batch.global_sequences / result.seconds, plan.stages * plan.replicas,
                            float(predicted))
        report.steps.append(record)
        if progress:
            progress(record)
    return report


class _Churn:
    """Two Poisson processes at `per_hour` each: departures of live peers, arrivals of new ones."""

    def __init__(self, per_hour: float, rng: np.random.Generator):
        self.mean_gap = 3600.0 / per_hour if per_hour > 0 else np.inf
        self.rng, self.joined, self.left_at = rng, 0, 0.0
        self.next_leave = self._gap()
        self.next_join = self._gap()

    def _gap(self) -> float:
        return float(self.rng.exponential(self.mean_gap)) if np.isfinite(self.mean_gap) else np.inf

    def leave(self, devices: list[Device], report: SimulationReport) -> Device:
        """The next departure: a uniformly chosen live peer."""
        gone = devices.pop(int(self.rng.integers(len(devices))))
        report.left += 1
        self.left_at = self.next_leave
        self.next_leave += self._gap()
        return gone

    def apply_until(self, clock: float, devices: list[Device], report: SimulationReport) -> bool:
        """Apply, in time order, every arrival and departure before `clock`; True if any."""
        changed = False
        while min(self.next_join, self.next_leave) <= clock and devices:
            if self.next_join <= self.next_leave:
                profile = devices[int(self.rng.integers(len(devices)))]
                devices.append(msgspec.structs.replace(profile, id=f"joined-{self.joined}"))
                self.joined += 1
                report.joined += 1
                self.next_join += self._gap()
            else:
                self.leave(devices, report)
            changed = True
        return changed


def _transfer_seconds(scenario: Scenario, plan: Plan, moved: list[str]) -> float:
    """How long the swarm waits for moved peers to load their stage's state.

    Each moved peer downloads equal shards from up to `DONORS` replicas of its stage that did not
    move, taken in turn so no one donor serves all newcomers; shards travel concurrently, each over
    its pair's link. A stage with no such replica restores from a checkpoint at the peer's own link.
    """
    if not moved:
        return 0.0
    index, net = scenario.index, scenario.network
    work = Workload(scenario, plan.stages, plan.replicas)
    state = STATE_BYTES_PER_PARAMETER * work.params(np.array(plan.layers))
    stage_of, moving = plan.stage_of(), set(moved)
    donors = {s: [index[d] for d in row if d not in moving] for s, row in enumerate(plan.grid)}
    turn = {s: 0 for s in donors}
    slowest = 0.0
    for device in moved:
        s, peer = stage_of[device], index[device]
        pool = donors[s]
        if not pool:
            slowest = max(slowest, state[s] / float(net.bandwidth(peer, peer)))
            continue
        count = min(DONORS, len(pool))
        chosen = np.array([pool[(turn[s] + k) % len(pool)] for k in range(count)])
        turn[s] += count
        shard = state[s] / count
        slowest = max(slowest, float((shard / net.bandwidth(chosen, peer) + net.latency(chosen, peer)).max()))
    return slowest
