"""One training iteration of a planned swarm, simulated micro-batch by micro-batch.

This is an independent check of the `full` cost model: instead of closed forms it moves every
micro-batch through every device and every uplink as events. Each device is a FIFO compute server
and each uplink a FIFO link (busy for bytes / bandwidth, the message arriving one latency later).
The schedule is GPipe: all forward passes, the last stage turns each micro-batch around once it
has seen all of them, then all backward passes. When every replica of a stage has finished its
backward passes, that stage's all-reduce runs message by message (vectorised): a reduce-scatter
in which each device sends its R-1 chunks back to back in ring order, then an all-gather that each
device starts once its own shard is reduced. The iteration ends when the last stage's all-reduce
does. Compute times can be jittered (log-normal, mean one) and slowed per device (stragglers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from swarm.scheduler.network import Network
from swarm.scheduler.scenario import Scenario
from swarm.scheduler.workload import BACKWARD_COMPUTE, Workload
from swarm.simulator.events import EventQueue

__all__ = ["IterationResult", "simulate_iteration", "allreduce_finish"]


@dataclass(frozen=True)
class IterationResult:
    """The outcome of one simulated iteration."""

    seconds: float             # from the first forward pass to the end of the last all-reduce
    stage_finish: npt.NDArray[np.float64]  # (S,) when each stage's all-reduce ended
    events: int                # discrete events processed


def simulate_iteration(scenario: Scenario, grid: npt.ArrayLike, layers: npt.ArrayLike,
                       rng: np.random.Generator | None = None, jitter: float = 0.0,
                       slowdown: npt.ArrayLike | None = None) -> IterationResult:
    """Simulate one iteration of `grid` (device positions, S x R) with `layers` per stage.

    `jitter` is the log-normal sigma of every compute time; `slowdown` (one factor per device of
    the scenario) makes stragglers.
    """
    return _Iteration(scenario, np.asarray(grid), np.asarray(layers), rng or np.random.default_rng(0),
                      jitter, slowdown).run()


def allreduce_finish(net: Network, group: npt.NDArray[np.int64], chunk: float,
                     ready: npt.NDArray[np.float64]) -> float:
    """When a reduce-scatter + all-gather among `group` ends, each frame `chunk` bytes.

    `ready[i]` is when device i can start sending (its backward done and its uplink free).
    """
    replicas = len(group)
    if replicas == 1:
        return float(ready[0])
    rows = np.arange(replicas)[:, None]
    targets = (rows + np.arange(1, replicas)[None, :]) % replicas   # ring order per sender
    busy = chunk / net.bandwidth(group[rows], group[targets])
    delay = net.latency(group[rows], group[targets])
    sent = ready[:, None] + np.cumsum(busy, axis=1)
    reduced = ready.copy()
    np.maximum.at(reduced, targets.ravel(), (sent + delay).ravel())
    start = np.maximum(reduced, sent[:, -1])
    gathered = start.copy()
    np.maximum.at(gathered, targets.ravel(), (start[:, None] + np.cumsum(busy, axis=1) + delay).ravel())
    return float(gathered.max())


class _Iteration:
    def __init__(self, scenario: Scenario, grid: npt.NDArray[np.int64], layers: npt.NDArray[np.int64],
                 rng: np.random.Generator, jitter: float, slowdown: npt.ArrayLike | None) -> None:
        stages, replicas = grid.shape
        work = Workload(scenario, stages, replicas)
        self.net, self.grid, self.m = scenario.network, grid, work.micro_batches
        flops = np.array([d.tflops * 1e12 for d in scenario.devices])
        factor = np.ones(len(flops)) if slowdown is None else np.asarray(slowdown)
        self.forward = work.forward_flops(layers)[:, None] / flops[grid] * factor[grid]
        shape = (2, stages, replicas, self.m)
        self.noise = (rng.lognormal(-jitter ** 2 / 2, jitter, size=shape) if jitter > 0 else np.ones(shape))
        self.volume = {"f": work.activation_bytes("forward"), "b": work.activation_bytes("backward")}
        self.chunk = work.gradient_chunk_bytes(layers)
        self.compute_free = np.zeros((stages, replicas))
        self.uplink_free = np.zeros((stages, replicas))
        self.done = {k: np.zeros((stages, replicas), dtype=np.int64) for k in "fb"}
        self.started = {k: np.zeros((stages, replicas), dtype=np.int64) for k in "fb"}
        self.bandwidth = self.net.bandwidth(grid[:-1], grid[1:]).tolist()  # hop s <-> s+1
        self.latency = self.net.latency(grid[:-1], grid[1:]).tolist()
        self.stage_ready = np.zeros(stages, dtype=np.int64)
        self.stage_finish = np.zeros(stages)
        self.queue = EventQueue()

    def run(self) -> IterationResult:
        for r in range(self.grid.shape[1]):
            for _ in range(self.m):
                self.queue.at(0.0, self._arrive, "f", 0, r)
        self.queue.run()
        return IterationResult(float(self.stage_finish.max()), self.stage_finish, self.queue.processed)

    def _arrive(self, kind: str, s: int, r: int) -> None:
        """A micro-batch (forward input or backward gradient) reaches device (s, r)."""
        job = self.started[kind][s, r]
        self.started[kind][s, r] += 1
        base = self.forward[s, r] * (1.0 if kind == "f" else BACKWARD_COMPUTE)
        start = max(self.queue.now, self.compute_free[s, r])
        end = start + base * self.noise[0 if kind == "f" else 1, s, r, job]
        self.compute_free[s, r] = end
        self.queue.at(end, self._computed, kind, s, r)

    def _computed(self, kind: str, s: int, r: int) -> None:
        stages = self.grid.shape[0]
        self.done[kind][s, r] += 1
        count = self.done[kind][s, r]
        if kind == "f":
            if s < stages - 1:
                self._send(kind, s, r, s + 1)
            elif count == self.m:  # GPipe: the last stage turns around after every forward
                for _ in range(self.m):
                    self.queue.at(self.queue.now, self._arrive, "b", s, r)
            return
        if s > 0:
            self._send(kind, s, r, s - 1)
        if count == self.m:
            self.stage_ready[s] += 1
            if self.stage_ready[s] == self.grid.shape[1]:
                ready = np.maximum(self.queue.now, self.uplink_free[s])
                self.stage_finish[s] = allreduce_finish(self.net, self.grid[s], self.chunk[s], ready)

    def _send(self, kind: str, s: int, r: int, to: int) -> None:
        hop = min(s, to)
        start = max(self.queue.now, self.uplink_free[s, r])
        end = start + self.volume[kind] / self.bandwidth[hop][r]
        self.uplink_free[s, r] = end
        self.queue.at(end + self.latency[hop][r], self._arrive, kind, to, r)
