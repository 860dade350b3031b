"""What each directed device-to-device path of a scenario should look like on the wire.

The scheduler's `Scenario.network` already applies the scenario's rules (two devices of one site
use the site's link, others their sites' link, capped by both devices' `uplink_gbps`); the
harness shapes exactly those numbers, so what it measures and what the cost model prices are the
same network. Rates at or above `UNSHAPED_MBPS` are left unshaped: a veth pair carries about
20 Gbit/s on this kind of machine, and HTB cannot pace faster links accurately anyway.
"""
from __future__ import annotations

from dataclasses import dataclass

from swarm.scheduler import Scenario
from swarm.scheduler.network import GBPS

__all__ = ["Path", "paths", "uplinks_mbps", "UNSHAPED_MBPS"]

UNSHAPED_MBPS = 10_000.0


@dataclass(frozen=True)
class Path:
    """The directed path src -> dst: its rate in Mbit/s and its one-way latency in ms."""

    src: str
    dst: str
    mbps: float
    latency_ms: float

    @property
    def shaped(self) -> bool:
        return self.mbps < UNSHAPED_MBPS


def paths(scenario: Scenario, *, rate_mbps: float | None = None, unshaped: bool = False) -> list[Path]:
    """Every directed path between two devices of `scenario`.

    rate_mbps: one rate for every path (the benchmarks sweep it over one scenario); unshaped: no
    rate at all (latency stays).
    """
    net = scenario.network
    ids = [device.id for device in scenario.devices]
    result = []
    for i, src in enumerate(ids):
        for j, dst in enumerate(ids):
            if i == j:
                continue
            mbps = float(net.bandwidth(i, j)) * 8 / 1e6
            if rate_mbps is not None:
                mbps = rate_mbps
            if unshaped:
                mbps = UNSHAPED_MBPS
            result.append(Path(src, dst, mbps, float(net.latency(i, j)) * 1e3))
    return result


def uplinks_mbps(scenario: Scenario) -> dict[str, float | None]:
    """Each device's own uplink cap in Mbit/s (None: only its paths' rates limit it)."""
    return {device.id: None if device.uplink_gbps is None else device.uplink_gbps * GBPS * 8 / 1e6
            for device in scenario.devices}
