"""A peer's Prometheus metrics (`swarm-peer join --metrics-port P` serves them at /metrics).

Each `PeerMetrics` owns its own `CollectorRegistry` (never prometheus_client's global one), so two
daemons in one process never mix their counts. Events the daemon reports as they happen become
counters and histograms; what the peer announces anyway (bytes and values per channel, loss,
state, cell) and its data port's counters (`ZmqTransport.stats()`: refused messages by category,
stale, early and overflowing frames) are read when scraped:

    metrics = PeerMetrics(lambda: daemon_record, lambda: transport.stats())
    server = serve_metrics(metrics.registry, "127.0.0.1", 0)   # server.url -> http://127.0.0.1:PORT/metrics
    metrics.prepared(step_result); metrics.committed(); server.close()
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from peers.dataplane.transport import REJECTIONS
from peers.protocol import CHANNELS, PeerRecord, PlanRecord

__all__ = ["PeerMetrics", "MetricsServer", "serve_metrics", "STEP_BUCKETS", "REJECT_REASONS", "rejections"]

# Step times from a loopback toy (tens of ms) to a large model over home uplinks (minutes).
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Why a data port refused frames (`peers.dataplane.stats`): the categories of `peers.dataplane.transport.REJECTIONS`
# (unparsable or undecodable, NaN/inf, unauthenticated, a duplicate key, a flooding sender), then an
# older plan, a plan not yet adopted, over the unclaimed-bytes budget.
REJECT_REASONS = (*REJECTIONS, "stale", "future", "overflow")


def rejections(stats: dict[str, Any]) -> dict[str, int]:
    """Frames refused per reason (REJECT_REASONS), from a `ZmqTransport.stats()` snapshot."""
    rejected = stats.get("rejected", {})
    return {**{category: int(rejected.get(category, 0)) for category in REJECTIONS},
            "stale": sum(stats.get("dropped_stale", {}).values()),
            "future": sum(stats.get("dropped_future", {}).values()),
            "overflow": sum(stats.get("dropped_overflow", {}).values())}


class MetricsServer:
    """A running /metrics endpoint on its own thread; `close()` stops it."""

    def __init__(self, server: Any, thread: threading.Thread, host: str) -> None:
        self._server, self._thread = server, thread
        self.port = int(server.server_address[1])
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        self.url = f"http://{shown}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve `registry` at http://HOST:PORT/metrics (port 0 picks a free one); ValueError naming
    `--metrics-port` when the port cannot be bound."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise ValueError(f"--metrics-port {port}: cannot listen on {host}:{port}: {error}") from None
    return MetricsServer(server, thread, host)


class PeerMetrics:
    """The metrics of one volunteer. `record()` and `stats()` are read at scrape time (None: not yet)."""

    def __init__(self, record: Callable[[], PeerRecord | None],
                 stats: Callable[[], dict[str, Any] | None],
                 dht_calls: Callable[[], Mapping[str, int]] = dict) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.steps_prepared = Counter("swarm_peer_steps_prepared", "Steps run up to the optimizer update", registry=r)
        self.steps_committed = Counter("swarm_peer_steps_committed", "Prepared steps the coordinator committed "
                                       "and this peer applied", registry=r)
        self.steps_aborted = Counter("swarm_peer_steps_aborted", "Prepared steps discarded because the plan "
                                     "changed", registry=r)
        self.step_seconds = Histogram("swarm_peer_step_seconds", "Seconds to prepare one step (forward, backward, "
                                      "all-reduce)", buckets=STEP_BUCKETS, registry=r)
        self.tokens_per_s = Gauge("swarm_peer_tokens_per_second", "Tokens of this peer's replica per second of "
                                  "its last step", registry=r)
        self.loss = Gauge("swarm_peer_loss", "Training loss of the last step (last stage only; NaN elsewhere)",
                          registry=r)
        self.loss.set(float("nan"))
        self.replans = Counter("swarm_peer_replans", "Plans adopted, by why the coordinator published them",
                               ["change"], registry=r)
        self.state_bytes = Counter("swarm_peer_state_transfer_bytes", "Stage state loaded over the network, by "
                                   "source (peer: a live replica, checkpoint: the coordinator)", ["source"],
                                   registry=r)
        self.state_seconds = Counter("swarm_peer_state_transfer_seconds", "Seconds spent loading stage state, "
                                     "by source", ["source"], registry=r)
        for source in ("peer", "checkpoint"):  # shown as 0 until a transfer happens
            self.state_bytes.labels(source=source)
            self.state_seconds.labels(source=source)
        self._last_heartbeat = 0.0
        r.register(_Announced(record, stats, lambda: self._last_heartbeat, dht_calls))

    def prepared(self, seconds: float, tokens: int, loss: float | None) -> None:
        self.steps_prepared.inc()
        self.step_seconds.observe(seconds)
        self.tokens_per_s.set(tokens / max(seconds, 1e-9))
        if loss is not None:
            self.loss.set(loss)

    def committed(self) -> None:
        self.steps_committed.inc()

    def aborted(self) -> None:
        self.steps_aborted.inc()

    def adopted(self, plan: PlanRecord) -> None:
        self.replans.labels(change=plan.reason.change.value).inc()

    def state_loaded(self, source: str, nbytes: int, seconds: float) -> None:
        """`nbytes` of stage state arrived from `source` ("peer" or "checkpoint") in `seconds`."""
        self.state_bytes.labels(source=source).inc(nbytes)
        self.state_seconds.labels(source=source).inc(seconds)

    def heartbeat(self) -> None:
        """The peer record was stored in the DHT just now."""
        self._last_heartbeat = time.monotonic()


class _Announced(Collector):
    """What the peer announces and its data port counts, as they are when scraped."""

    def __init__(self, record: Callable[[], PeerRecord | None], stats: Callable[[], dict[str, Any] | None],
                 last_heartbeat: Callable[[], float], dht_calls: Callable[[], Mapping[str, int]]) -> None:
        self._record, self._stats, self._last_heartbeat = record, stats, last_heartbeat
        self._dht_calls = dht_calls

    def collect(self) -> Iterator[Any]:
        record = self._record()
        channels_b = CounterMetricFamily("swarm_peer_channel_bytes", "Bytes this peer sent, per channel",
                                         labels=["channel"])
        channels_v = CounterMetricFamily("swarm_peer_channel_values", "Tensor values this peer sent, per channel",
                                         labels=["channel"])
        if record is not None:
            sent_b, sent_v = dict(record.bytes_sent), dict(record.values_sent)
            for channel in CHANNELS:
                channels_b.add_metric([channel], sent_b.get(channel, 0))
                channels_v.add_metric([channel], sent_v.get(channel, 0))
            info = GaugeMetricFamily("swarm_peer_info", "This peer (value 1) with its name, device and state",
                                     labels=["name", "device", "state"])
            info.add_metric([record.name, record.device, record.state], 1)
            yield info
            for name, text, value in (("plan_version", "Plan version this peer follows", record.plan_version),
                                      ("step", "Last step this peer applied", record.step),
                                      ("stage", "Pipeline stage of this peer (-1: none)", record.stage),
                                      ("replica", "Data-parallel replica of this peer (-1: none)", record.replica),
                                      ("tflops", "Measured TFLOPS of this peer's device", record.tflops)):
                yield GaugeMetricFamily(f"swarm_peer_{name}", text, value=value)
        yield channels_b
        yield channels_v
        try:
            stats = self._stats()
        except Exception:  # the data port closed while scraping: report no counters this time
            stats = None
        if stats is not None:
            rejected = CounterMetricFamily("swarm_peer_frames_rejected", "Frames this peer's data port refused, "
                                           "by reason", labels=["reason"])
            for reason, count in rejections(stats).items():
                rejected.add_metric([reason], count)
            yield rejected
            yield CounterMetricFamily("swarm_peer_send_failed", "Messages zmq refused to send",
                                      value=sum(stats.get("send_failed", {}).values()))
        calls = CounterMetricFamily("swarm_peer_dht_requests", "DHT requests this peer sent, by the thread that "
                                    "sent them (the training thread, MainThread, sends none once it trains)",
                                    labels=["thread"])
        for thread, count in dict(self._dht_calls()).items():
            calls.add_metric([thread], count)
        yield calls
        beat = self._last_heartbeat()
        age = time.monotonic() - beat if beat else float("nan")
        yield GaugeMetricFamily("swarm_peer_heartbeat_age_seconds", "Seconds since this peer last announced its "
                                "record (NaN: never yet)", value=age)
