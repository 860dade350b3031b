"""Measuring links: from a joining peer to the peers already in the swarm, then every link a plan gives it
(what the scheduler plans with and the timeouts are sized from), then, once it carries training
traffic, from that traffic (`traffic_links`)."""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Collection, Mapping

from peers.dataplane.meter import LinkMeter
from peers.dataplane.probe import measure_bandwidth, probe
from peers.dht import SwarmDHT
from peers.protocol import ControlRecord, Link, PlanRecord
from peers.security import CurveKeys

from .credentials import Credentials
from .records import read_peers

__all__ = ["measure_links", "probe_link", "plan_neighbours", "traffic_links", "links_to", "PlanLinkProber",
           "MAX_PROBED"]

log = logging.getLogger(__name__)

MAX_PROBED = 8
PING_TIMEOUT_S = 2.0
PROBE_BYTES = 1 << 20
BANDWIDTH_TIMEOUT_S = 5.0
# A link's traffic must read below this fraction of its probe's rate to replace it (`traffic_links`): two
# measurements of a steady link differ by a few percent, which must not flip what the peer announces.
SLOWER = 0.75
# A link whose probe failed carried less than PROBE_BYTES within BANDWIDTH_TIMEOUT_S (about 1.7 Mbit/s):
# the slowest link a probe can tell apart, and what an unmeasurable link is priced at.
SLOW_GBPS = PROBE_BYTES * 8 / BANDWIDTH_TIMEOUT_S / 1e9


def measure_links(dht: SwarmDHT, control: ControlRecord, credentials: Credentials) -> dict[str, Link]:
    """Round trip and bandwidth to up to MAX_PROBED other peers (admitted ones, in a swarm with a key)."""
    owners = {name: admitted.owner for name, admitted in control.admitted.items()}
    keys = credentials.keys
    others = [record for name, record in read_peers(dht, owners).items()
              if name != credentials.name and (keys is None or name in owners)][:MAX_PROBED]
    return {other.name: probe_link(other.address, keys=keys, server_key=credentials.server_key(control, other.name))
            for other in others}


def probe_link(address: str, *, keys: CurveKeys | None = None, server_key: str | None = None) -> Link:
    """The link to the peer at `address`. A probe that gets no answer within its timeout says only that
    the link is slow: it is recorded as at most what could have crossed it meanwhile (`Link.at_most`)."""
    rtt = probe(address, timeout=PING_TIMEOUT_S, keys=keys, server_key=server_key)
    if rtt is None:  # not even a ping came back: a round trip of at least the timeout
        return Link(bandwidth_gbps=SLOW_GBPS, latency_ms=PING_TIMEOUT_S * 1e3 / 2, at_most=True)
    bandwidth = measure_bandwidth(address, nbytes=PROBE_BYTES, timeout=BANDWIDTH_TIMEOUT_S, keys=keys,
                                  server_key=server_key)
    if bandwidth is None:
        return Link(bandwidth_gbps=SLOW_GBPS, latency_ms=rtt * 1e3 / 2, at_most=True)
    return Link(bandwidth_gbps=bandwidth * 8 / 1e9, latency_ms=rtt * 1e3 / 2)


def plan_neighbours(plan: PlanRecord, name: str) -> list[str]:
    """The peers `plan` connects `name` to: its pipeline neighbours and its stage's other replicas."""
    position = plan.position(name)
    if position is None:
        return []
    stage, replica = position
    pipeline = [plan.grid[s][replica] for s in (stage - 1, stage + 1) if 0 <= s < len(plan.grid)]
    return pipeline + [other for other in plan.grid[stage] if other != name]


class PlanLinkProber:
    """Probes, on its own thread, each link a new plan gives this peer that neither end has measured
    (join probes at most MAX_PROBED peers), and hands the measured links to `on_measured`.

    measured(): the peers whose link to this one is measured already, from either end (the scheduler
    takes either direction). Measuring them again while the grid trains would only add noise: on a
    busy CPU a probe reads low, and the scheduler would move peers away from links that are fine.
    """

    def __init__(self, name: str, keys: CurveKeys | None, on_measured: Callable[[dict[str, Link]], None],
                 measured: Callable[[], Collection[str]]) -> None:
        self.name, self.keys, self.on_measured, self.measured = name, keys, on_measured, measured
        self._plans: queue.SimpleQueue[PlanRecord] = queue.SimpleQueue()

    def follow(self, plan: PlanRecord) -> None:
        self._plans.put(plan)

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: measure the links of each plan followed."""
        while not stop.is_set():
            try:
                plan = self._plans.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                links = self.measure(plan)
            except Exception as error:  # e.g. the DHT read behind `measured`: the next plan tries again
                log.warning("could not measure the links of plan %d: %s", plan.version, error)
                continue
            if links:
                self.on_measured(links)

    def measure(self, plan: PlanRecord) -> dict[str, Link]:
        """The links `plan` gives this peer that nobody measured yet."""
        known = set(self.measured())
        return {peer: probe_link(plan.addresses[peer], keys=self.keys, server_key=plan.keys.get(peer))
                for peer in plan_neighbours(plan, self.name) if peer not in known and peer in plan.addresses}


def traffic_links(probed: Mapping[str, Link], meter: LinkMeter) -> dict[str, Link]:
    """What the training traffic shows of this peer's links, to announce over `probed` (the probes' readings).

    A link whose traffic moves clearly slower than its probe measured (below SLOWER x: it slowed down
    since) is announced at the traffic's rate, and one whose probe failed (`at_most`) at whatever its
    traffic shows; otherwise the probe's reading stands: its 1 MB transfer measures the sustained
    rate, while the traffic's best message may have ridden a shaper's burst. The traffic's rate is
    taken net of the probed latency (none when the probe failed: the rate is then a lower bound); the
    latency is the probe's unless the traffic shows it shorter (half the fastest round trip bounds it).
    """
    readings = {}
    for peer in meter.peers():
        link = probed.get(peer)
        trusted = link if link is not None and not link.at_most else None  # a probe that measured the link
        bandwidth = (meter.bandwidth_gbps(peer, trusted.latency_ms / 1e3, trusted.bandwidth_gbps) if trusted
                     else meter.bandwidth_gbps(peer, 0.0))
        fastest = meter.fastest_round_trip_s(peer)
        if bandwidth is None or fastest is None:
            continue
        if trusted and bandwidth >= SLOWER * trusted.bandwidth_gbps:
            readings[peer] = trusted
            continue
        latency_ms = fastest * 1e3 / 2 if link is None else min(link.latency_ms, fastest * 1e3 / 2)
        readings[peer] = Link(bandwidth_gbps=round(bandwidth, 6), latency_ms=round(latency_ms, 3), from_traffic=True)
    return readings


def links_to(dht: SwarmDHT, name: str) -> set[str]:
    """The peers whose records list a measured link to `name`."""
    return {other for other, record in read_peers(dht).items() if name in record.links}
