"""Pairwise bandwidth and latency between devices, as vectorised lookups.

Stored per site (K x K) plus one uplink per device, never per device pair, so a 10,000-device
swarm costs kilobytes. Two devices of one site use the site's own link, otherwise the link
between their sites; the bandwidth is then capped by both devices' uplinks (home volunteers).
Units inside: bytes per second and seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from swarm.scheduler.scenario import Device, Link, Site

__all__ = ["Network", "GBPS"]

GBPS = 1e9 / 8  # bytes per second in one Gbit/s

Devices = npt.NDArray[np.int64] | int  # device positions: one, or an array of them


@dataclass(frozen=True)
class Network:
    """Bandwidth and latency between any two devices, from site links and device uplinks."""

    site_of: npt.NDArray[np.int64]     # (N,) site index of each device
    uplink: npt.NDArray[np.float64]    # (N,) bytes/s, inf when the device has no own cap
    site_bw: npt.NDArray[np.float64]   # (K, K) bytes/s; the diagonal is the site's own link
    site_lat: npt.NDArray[np.float64]  # (K, K) seconds

    @classmethod
    def build(cls, names: list[str], sites: Mapping[str, Site], links: Iterable[Link],
              devices: Sequence[Device]) -> Network:
        """The matrices for sites `names`, the links between them (one per pair), and devices."""
        k = len(names)
        position = {name: i for i, name in enumerate(names)}
        bw = np.full((k, k), np.nan)
        lat = np.full((k, k), np.nan)
        for name, site in sites.items():
            i = position[name]
            bw[i, i], lat[i, i] = site.bandwidth_gbps * GBPS, site.latency_ms / 1e3
        for link in links:
            i, j = position[link.between[0]], position[link.between[1]]
            bw[i, j] = bw[j, i] = link.bandwidth_gbps * GBPS
            lat[i, j] = lat[j, i] = link.latency_ms / 1e3
        site_of = np.array([position[d.site] for d in devices], dtype=np.int64)
        uplink = np.array([np.inf if d.uplink_gbps is None else d.uplink_gbps * GBPS for d in devices])
        return cls(site_of, uplink, bw, lat)

    def bandwidth(self, a: Devices, b: Devices) -> npt.NDArray[np.float64]:
        """Bytes/s between devices a and b (arrays broadcast), capped by both uplinks."""
        a, b = np.asarray(a), np.asarray(b)
        bandwidth: npt.NDArray[np.float64] = np.minimum(self.site_bw[self.site_of[a], self.site_of[b]],
                                                        np.minimum(self.uplink[a], self.uplink[b]))
        return bandwidth

    def latency(self, a: Devices, b: Devices) -> npt.NDArray[np.float64]:
        """Seconds of one-way latency between devices a and b (arrays broadcast)."""
        latency: npt.NDArray[np.float64] = self.site_lat[self.site_of[np.asarray(a)], self.site_of[np.asarray(b)]]
        return latency

    def link_cost(self, a: Devices, b: Devices, volume: float) -> npt.NDArray[np.float64]:
        """alpha + volume / beta: seconds to move `volume` bytes from a to b."""
        return self.latency(a, b) + volume / self.bandwidth(a, b)
