"""One training iteration of a planned swarm, simulated micro-batch by micro-batch.

This is an independent check of the `full` cost model: instead of closed forms it moves every
micro-batch through every device and every uplink as events. Each device is a FIFO compute server
and each uplink a FIFO link (busy for bytes / bandwidth, the message arriving one latency later).
A device's codecs run on its compute: it decodes each frame it receives before the pass that uses
it and encodes each frame it sends after the pass that made it. The schedule is GPipe: all forward
passes, the last stage turns each micro-batch around once it has seen all of them, then all
backward passes. A replica's last backward pass also encodes its all-reduce shares, bucket by
bucket, and its uplink sends them as they are ready (allreduce.py); once every replica of a stage
has finished, that stage's reduce and all-gather run message by message. The iteration ends when
the last stage's all-reduce does, plus the scenario's commit round trip. Compute times can be
jittered (log-normal, mean one) and slowed per device (stragglers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from swarm.scheduler.scenario import Scenario
from swarm.scheduler.workload import BACKWARD_COMPUTE, Workload
from swarm.simulator.allreduce import allreduce_finish, ring, share_sends
from swarm.simulator.events import EventQueue

__all__ = ["IterationResult", "simulate_iteration"]


@dataclass(frozen=True)
class IterationResult:
    """The outcome of one simulated iteration."""

    seconds: float             # from the first forward pass to the commit after the last all-reduce
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


class _Iteration:
    def __init__(self, scenario: Scenario, grid: npt.NDArray[np.int64], layers: npt.NDArray[np.int64],
                 rng: np.random.Generator, jitter: float, slowdown: npt.ArrayLike | None) -> None:
        stages, replicas = grid.shape
        work = Workload(scenario, stages, replicas)
        self.net, self.grid, self.m = scenario.network, grid, work.micro_batches
        self.commit_s = scenario.control.commit_s
        flops = np.array([d.tflops * 1e12 for d in scenario.devices])
        kappa = work.codec_s[grid]
        factor = np.ones(len(flops)) if slowdown is None else np.asarray(slowdown)
        self.forward = work.forward_flops(layers)[:, None] / flops[grid] * factor[grid]
        self.codec = work.pass_values[:, None] * kappa   # one micro-batch's frames in and out
        self.shares = (replicas - 1) * work.chunk_values(layers)[:, None] * kappa
        self.chunks = replicas * work.chunk_values(layers)[:, None] * kappa
        shape = (2, stages, replicas, self.m)
        self.noise = (rng.lognormal(-jitter ** 2 / 2, jitter, size=shape) if jitter > 0 else np.ones(shape))
        self.volume = {"f": work.activation_bytes("forward"), "b": work.activation_bytes("backward")}
        self.chunk = work.gradient_chunk_bytes(layers)
        self.buckets = work.buckets(layers).astype(np.int64)
        self.compute_free = np.zeros((stages, replicas))
        self.uplink_free = np.zeros((stages, replicas))
        self.done = {k: np.zeros((stages, replicas), dtype=np.int64) for k in "fb"}
        self.started = {k: np.zeros((stages, replicas), dtype=np.int64) for k in "fb"}
        self.bandwidth = self.net.bandwidth(grid[:-1], grid[1:]).tolist()  # hop s <-> s+1
        self.latency = self.net.latency(grid[:-1], grid[1:]).tolist()
        self.last_start = np.zeros((stages, replicas))
        self.sent = np.zeros((stages, replicas, replicas - 1))   # when each share's last bucket left
        self.stage_ready = np.zeros(stages, dtype=np.int64)
        self.stage_finish = np.zeros(stages)
        self.queue = EventQueue()

    def run(self) -> IterationResult:
        for r in range(self.grid.shape[1]):
            for _ in range(self.m):
                self.queue.at(0.0, self._arrive, "f", 0, r)
        self.queue.run()
        return IterationResult(float(self.stage_finish.max()) + self.commit_s, self.stage_finish,
                               self.queue.processed)

    def _arrive(self, kind: str, s: int, r: int) -> None:
        """A micro-batch (forward input or backward gradient) reaches device (s, r)."""
        job = self.started[kind][s, r]
        self.started[kind][s, r] += 1
        base = self.forward[s, r] * (1.0 if kind == "f" else BACKWARD_COMPUTE)
        start = max(self.queue.now, self.compute_free[s, r])
        end = start + base * self.noise[0 if kind == "f" else 1, s, r, job] + self.codec[s, r]
        if kind == "b" and job == self.m - 1:  # the last backward pass encodes the all-reduce's shares too
            end += self.shares[s, r]
            self.last_start[s, r] = start
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
        free = self.uplink_free[s, r]
        paused = self._send(kind, s, r, s - 1) if s > 0 else (np.inf, np.inf)
        if count == self.m:
            self._backward_done(s, r, free, paused)

    def _backward_done(self, s: int, r: int, free: float, paused: tuple[float, float]) -> None:
        """Device (s, r) ended its last backward pass: its shares go out; the stage's last one reduces."""
        group = self.grid[s]
        if len(group) > 1:
            targets = group[ring(len(group))[r]]
            busy = self.chunk[s] / self.net.bandwidth(group[r], targets)
            self.sent[s, r] = share_sends(busy, int(self.buckets[s]), self.last_start[s, r], self.queue.now,
                                          free, paused)
        self.stage_ready[s] += 1
        if self.stage_ready[s] < len(group):
            return
        if len(group) == 1:
            self.stage_finish[s] = max(self.queue.now, self.uplink_free[s, 0])
            return
        self.stage_finish[s] = allreduce_finish(self.net, group, self.chunk[s], self.sent[s],
                                                self.compute_free[s], self.chunks[s])

    def _send(self, kind: str, s: int, r: int, to: int) -> tuple[float, float]:
        """Put one micro-batch's frame on (s, r)'s uplink toward stage `to`: (start, end) of its sending."""
        hop = min(s, to)
        start = max(self.queue.now, self.uplink_free[s, r])
        end = start + self.volume[kind] / self.bandwidth[hop][r]
        self.uplink_free[s, r] = end
        self.queue.at(end + self.latency[hop][r], self._arrive, kind, to, r)
        return start, end
