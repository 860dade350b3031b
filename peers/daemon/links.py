"""Measuring the links from a joining peer to the peers already in the swarm (what the scheduler plans with)."""
from __future__ import annotations

from peers.dht import SwarmDHT
from peers.probe import measure_bandwidth, probe
from peers.protocol import ControlRecord, Link

from .credentials import Credentials
from .records import read_peers

__all__ = ["measure_links", "MAX_PROBED"]

MAX_PROBED = 8


def measure_links(dht: SwarmDHT, control: ControlRecord, credentials: Credentials) -> dict[str, Link]:
    """Round trip and bandwidth to up to MAX_PROBED other peers (admitted ones, in a swarm with a key)."""
    owners = {name: admitted.owner for name, admitted in control.admitted.items()}
    keys = credentials.keys
    others = [record for name, record in read_peers(dht, owners).items()
              if name != credentials.name and (keys is None or name in owners)][:MAX_PROBED]
    links: dict[str, Link] = {}
    for other in others:
        server_key = credentials.server_key(control, other.name)
        rtt = probe(other.address, timeout=2.0, keys=keys, server_key=server_key)
        if rtt is None:
            continue
        bandwidth = measure_bandwidth(other.address, nbytes=1 << 20, timeout=5.0, keys=keys, server_key=server_key)
        links[other.name] = Link(latency_ms=rtt * 1e3 / 2, bandwidth_gbps=(bandwidth or 1.25e8) * 8 / 1e9)
    return links
