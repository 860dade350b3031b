"""Namespaces, a bridge and shaped links: the emulated network one harness run lives in.

    topology = Topology(["a0", "a1", "b0", "b1"])   # names only; nothing exists yet
    topology.build()                                 # namespaces, veths, bridge, addresses
    topology.shape(paths, uplinks, netem=False)      # htb classes + u32 filters per destination
    topology.counters()                              # {(src, dst): bytes sent on that path}
    topology.teardown()                              # idempotent; also after a partial build

Layout (nothing on the host's own interfaces, addresses from 10.213.0.0/16 only inside our
namespaces): one namespace per device (`swn-RUN-dN`) and one for the coordinator (`swn-RUN-c`),
each with a veth `swn-eth0` whose other end sits in a bridge namespace (`swn-RUN-br`), enslaved to
`swn-br0`. The bridge namespace has no address, so nothing routes out of the emulated network.

Shaping is on each device's egress, where a sender's uplink is: an `htb` root with one class per
destination device (u32 filter on the destination address), all under one parent class at the
device's uplink cap (so its paths share it, as a home uplink is shared), and a default class for
everything else (the coordinator, the DHT bootstrap) that is not shaped. A destination class
borrows from the parent up to its path's rate (ceil), so one busy path gets its whole rate. An
unshaped path gets a 10 Gbit/s class (more than a veth carries here) only so its bytes are counted.
With `netem` (kernels that have it) each class also gets a `netem delay` leaf for its path's latency.
"""
from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from itertools import count

from .commands import PREFIX, CommandError, batch, netns_list, netns_pids, run
from .links import UNSHAPED_MBPS, Path

__all__ = ["Node", "Topology", "run_id", "owner_pid", "remove_namespace", "SUBNET", "DATA_PORT", "DHT_PORT"]

SUBNET = "10.213.0.0/16"
DATA_PORT = 40000
DHT_PORT = 31337
_IFACE = f"{PREFIX}eth0"
_BRIDGE = f"{PREFIX}br0"
_DEFAULT_CLASS = "ffff"
_UNSHAPED = "10gbit"
_QUANTUM = 60000
_RUNS = count()
_RUN = re.compile(rf"^{re.escape(PREFIX)}(\d+)x\d+-")
_SENT = re.compile(r"^class htb 1:([0-9a-f]+) .*?\n\s*Sent (\d+) bytes", re.MULTILINE)


def run_id() -> str:
    """A name part unique to this process and run: PID x counter (the PID tells leftovers from live runs)."""
    return f"{os.getpid()}x{next(_RUNS)}"


def owner_pid(name: str) -> int | None:
    """The PID of the harness that created a `swn-PIDxN-...` namespace or cgroup (None: not one of ours)."""
    match = _RUN.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Node:
    """One endpoint of the emulated network: a device's peer or the coordinator."""

    name: str
    netns: str
    address: str  # IPv4 inside SUBNET
    port: str  # the veth end in the bridge namespace

    @property
    def data_address(self) -> str:
        """The zmq address of the peer living here (every namespace has its own port space)."""
        return f"tcp://{self.address}:{DATA_PORT}"


class Topology:
    """The namespaces and links of one run; `build()` creates them, `teardown()` removes them all."""

    def __init__(self, devices: list[str], run: str | None = None) -> None:
        if len(devices) > 250 * 250:
            raise ValueError(f"{len(devices)} devices do not fit the harness's address range {SUBNET}")
        self.run = run or run_id()
        base = f"{PREFIX}{self.run}"
        self.bridge_ns = f"{base}-br"
        self.coordinator = Node("coordinator", f"{base}-c", "10.213.0.1", f"{PREFIX}vc")
        self.devices = {name: Node(name, f"{base}-d{i}", f"10.213.{1 + i // 250}.{1 + i % 250}", f"{PREFIX}v{i}")
                        for i, name in enumerate(devices)}
        self._classes: dict[str, dict[str, str]] = {}  # src -> dst -> htb minor (hex)
        self.built = False

    @property
    def nodes(self) -> list[Node]:
        return [self.coordinator, *self.devices.values()]

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_ns, *(node.netns for node in self.nodes)]

    def build(self) -> None:
        """Create the bridge namespace, then each node's namespace, veth, address; everything up."""
        self.built = True  # from here on, teardown has something to remove even if a step fails
        for netns in self.namespaces:
            run(["ip", "netns", "add", netns])
        bridge = [f"link add {_BRIDGE} type bridge", f"link set {_BRIDGE} up", "link set lo up"]
        batch("ip", self.bridge_ns, bridge)
        for node in self.nodes:
            batch("ip", node.netns, [
                f"link add {_IFACE} type veth peer name {node.port} netns {self.bridge_ns}",
                f"addr add {node.address}/16 dev {_IFACE}",
                f"link set {_IFACE} up",
                "link set lo up",
            ])
        enslave = [(f"link set {node.port} master {_BRIDGE}", f"link set {node.port} up") for node in self.nodes]
        batch("ip", self.bridge_ns, [line for pair in enslave for line in pair])

    def shape(self, paths: list[Path], uplinks: dict[str, float | None], *, netem: bool = False) -> None:
        """Give each directed path its rate (and, with `netem`, its latency) on the sender's egress."""
        by_src: dict[str, list[Path]] = {}
        for path in paths:
            by_src.setdefault(path.src, []).append(path)
        for src, shaped in by_src.items():  # unshaped paths get a class too: their bytes are counted
            cap = uplinks.get(src)
            parent = cap if cap is not None else sum(min(p.mbps, UNSHAPED_MBPS) for p in shaped)
            top = " burst 1mb cburst 1mb" if parent >= 1000 else ""
            lines = [f"qdisc replace dev {_IFACE} root handle 1: htb default {_DEFAULT_CLASS}",
                     f"class add dev {_IFACE} parent 1: classid 1:{_DEFAULT_CLASS} htb rate {_UNSHAPED} "
                     f"burst 1mb cburst 1mb quantum {_QUANTUM}",
                     f"class add dev {_IFACE} parent 1: classid 1:1 htb rate {_kbit(parent)} ceil {_kbit(parent)} "
                     f"quantum {_QUANTUM}{top}"]
            classes = self._classes.setdefault(src, {})
            for k, path in enumerate(shaped):
                minor = format(0x10 + k, "x")
                classes[path.dst] = minor
                ceil = min(path.mbps, parent)
                share = max(ceil / len(shaped), 0.01) if cap is not None else ceil
                burst = " burst 1mb cburst 1mb" if ceil >= 1000 else ""  # tc's own burst overflows at Gbit/s
                lines.append(f"class add dev {_IFACE} parent 1:1 classid 1:{minor} htb rate {_kbit(share)} "
                             f"ceil {_kbit(ceil)} quantum {_QUANTUM}{burst}")
                lines.append(f"filter add dev {_IFACE} parent 1: protocol ip prio 1 u32 match ip dst "
                             f"{self.devices[path.dst].address}/32 flowid 1:{minor}")
                if netem and path.latency_ms > 0:
                    lines.append(f"qdisc add dev {_IFACE} parent 1:{minor} handle {minor}: netem "
                                 f"delay {path.latency_ms:.3f}ms limit 100000")
            batch("tc", self.devices[src].netns, lines)

    def set_rate(self, src: str, dst: str, mbps: float) -> None:
        """Change the shaped path src -> dst to `mbps` while traffic flows (a link that slows down or recovers)."""
        minor = self._classes.get(src, {}).get(dst)
        if minor is None:
            raise ValueError(f"no shaped path {src} -> {dst}: shape the network first")
        batch("tc", self.devices[src].netns, [f"class change dev {_IFACE} parent 1:1 classid 1:{minor} htb rate "
                                              f"{_kbit(mbps)} ceil {_kbit(mbps)} quantum {_QUANTUM}"])

    def counters(self) -> dict[tuple[str, str], int]:
        """Bytes each shaped path has carried so far (IP packets with headers, from the htb classes)."""
        result: dict[tuple[str, str], int] = {}
        for src, classes in self._classes.items():
            text = run(["tc", "-n", self.devices[src].netns, "-s", "class", "show", "dev", _IFACE], check=False)
            sent = {minor: int(nbytes) for minor, nbytes in _SENT.findall(text)}
            for dst, minor in classes.items():
                result[src, dst] = sent.get(minor, 0)
        return result

    def teardown(self) -> list[str]:
        """Kill whatever still runs inside our namespaces and delete them; returns what was removed.

        Deleting a namespace destroys the veth ends in it (and so their peers) and the bridge; a
        namespace is only really gone once no process is left in it, hence the kill first.
        """
        if not self.built:
            return []
        present = set(netns_list())
        removed = []
        for netns in self.namespaces:
            if netns in present:
                remove_namespace(netns)
                removed.append(netns)
        self.built = False
        return removed


def remove_namespace(netns: str) -> None:
    """SIGKILL every process in `netns`, then delete it (its interfaces go with it)."""
    for _ in range(50):
        pids = netns_pids(netns)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.1)
    try:
        run(["ip", "netns", "del", netns])
    except CommandError:
        if netns in netns_list():
            raise


def _kbit(mbps: float) -> str:
    """A tc rate for `mbps` Mbit/s, in whole kbit/s (tc parses no exponents)."""
    return f"{max(8, round(mbps * 1000))}kbit"
