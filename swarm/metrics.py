"""The coordinator's Prometheus metrics, served at /metrics of `swarm-coordinator --http`.

A `CoordinatorMetrics` owns its own `CollectorRegistry`. What happens once (a commit, an aborted
step, a plan and why, a checkpoint) is counted as the report records it; what the swarm looks like
(peers, heartbeat ages, capacity, bytes per channel, frames peers refused) is read from a
`SwarmView` when scraped. Names start with `swarm_`; a peer's own endpoint uses `swarm_peer_`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from peers.metrics import STEP_BUCKETS
from peers.protocol import CHANNELS, PEER_STATES

__all__ = ["CoordinatorMetrics", "SwarmView", "FP32_BITS"]

FP32_BITS = 32.0  # what a value would take uncompressed: the compression ratio's numerator


@dataclass
class SwarmView:
    """What the scrape reads: `swarm status`'s view (None: not available now), traffic totals per
    channel, and frames refused per (peer, reason) as last announced."""

    status: dict[str, Any] | None = None
    bytes: dict[str, int] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    rejected: dict[tuple[str, str], int] = field(default_factory=dict)


class CoordinatorMetrics:
    """Counters the coordinator's telemetry increments, plus a collector reading `view()`."""

    def __init__(self, view: Callable[[], SwarmView]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.steps_committed = Counter("swarm_steps_committed", "Steps committed (applied by every grid member)",
                                       registry=r)
        self.steps_aborted = Counter("swarm_steps_aborted", "Steps aborted everywhere because grid members were "
                                     "lost (the repaired plan reruns them)", registry=r)
        self.step_seconds = Histogram("swarm_step_seconds", "Seconds between consecutive commits",
                                      buckets=STEP_BUCKETS, registry=r)
        self.replans = Counter("swarm_replans", "Plans published, by why (PlanReason.change)", ["change"], registry=r)
        self.departures = Counter("swarm_departures", "Grid members lost, by why (PlanReason.lost)", ["why"],
                                  registry=r)
        self.rollbacks = Counter("swarm_rollbacks", "Restarts from a checkpoint (a stage lost every replica, or "
                                 "a resume)", registry=r)
        self.checkpoints = Counter("swarm_checkpoints", "Checkpoints written", registry=r)
        self.checkpoint_bytes = Counter("swarm_state_transfer_bytes", "Stage state fetched from the replicas into "
                                        "checkpoints", registry=r)
        self.checkpoint_seconds = Counter("swarm_state_transfer_seconds", "Seconds from a checkpoint step's commit "
                                          "until its checkpoint was fetched and written", registry=r)
        self.tokens_per_s = Gauge("swarm_tokens_per_second", "Tokens per second of the last committed step",
                                  registry=r)
        self.loss = Gauge("swarm_loss", "Mean loss of the last committed step (NaN: none reported)", registry=r)
        self.loss.set(math.nan)
        self.step = Gauge("swarm_global_step", "The last committed step", registry=r)
        self.plan_version = Gauge("swarm_plan_version", "The current plan's version", registry=r)
        r.register(_SwarmCollector(view))

    def exposition(self) -> tuple[bytes, str]:
        """The /metrics body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _SwarmCollector(Collector):
    def __init__(self, view: Callable[[], SwarmView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Any]:
        view = self._view()
        sent_b = CounterMetricFamily("swarm_channel_bytes", "Bytes sent over each channel by every peer (the most "
                                     "seen: peers that left took their counts along)", labels=["channel"])
        sent_v = CounterMetricFamily("swarm_channel_values", "Tensor values sent over each channel", labels=["channel"])
        bits = GaugeMetricFamily("swarm_channel_bits_per_value", "Wire bits per value of each channel",
                                 labels=["channel"])
        ratio = GaugeMetricFamily("swarm_channel_compression_ratio", "fp32 bits over wire bits per value",
                                  labels=["channel"])
        for channel in CHANNELS:
            nbytes, values = view.bytes.get(channel, 0), view.values.get(channel, 0)
            sent_b.add_metric([channel], nbytes)
            sent_v.add_metric([channel], values)
            if values and nbytes:
                bits.add_metric([channel], 8 * nbytes / values)
                ratio.add_metric([channel], FP32_BITS * values / (8 * nbytes))
        yield from (sent_b, sent_v, bits, ratio)
        rejected = CounterMetricFamily("swarm_frames_rejected", "Frames refused by data ports, by peer and reason "
                                       "(malformed, nonfinite, unauthenticated, duplicate, flood, stale, future, "
                                       "overflow)", labels=["peer", "reason"])
        for (peer, reason), count in sorted(view.rejected.items()):
            rejected.add_metric([peer, reason], count)
        yield rejected
        if view.status is not None:
            yield from _status_metrics(view.status)


def _status_metrics(status: dict[str, Any]) -> Iterator[Any]:
    peers = status.get("peers", [])
    plan = status.get("plan") or {}
    members = {name for row in plan.get("grid", []) for name in row}
    age = GaugeMetricFamily("swarm_heartbeat_age_seconds", "Seconds since each peer last announced itself",
                            labels=["peer"])
    tflops = GaugeMetricFamily("swarm_tflops", "Measured TFLOPS of each peer", labels=["peer", "device"])
    for peer in peers:
        age.add_metric([peer["name"]], peer["heartbeat_age_s"])
        tflops.add_metric([peer["name"], peer["device"]], peer["tflops"])
    yield age
    yield tflops
    states = GaugeMetricFamily("swarm_peers", "Live peers by state", labels=["state"])
    for state in PEER_STATES:
        states.add_metric([state], sum(1 for peer in peers if peer["state"] == state))
    yield states
    capacity = GaugeMetricFamily("swarm_capacity_tflops", "TFLOPS of all live peers (total) and of the plan's "
                                 "grid members (used)", labels=["kind"])
    capacity.add_metric(["total"], sum(peer["tflops"] for peer in peers))
    capacity.add_metric(["used"], sum(peer["tflops"] for peer in peers if peer["name"] in members))
    yield capacity
    yield GaugeMetricFamily("swarm_peers_training", "Grid members announcing state training",
                            value=sum(1 for p in peers if p["name"] in members and p["state"] == "training"))
    yield GaugeMetricFamily("swarm_peers_standby", "Peers the plan holds in reserve",
                            value=len(plan.get("standby", [])))
