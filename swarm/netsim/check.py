"""`swarm-sim net check`: measure every shaped path of the emulated network through the data plane.

One agent (`swarm.netsim.agent`, a `ZmqTransport` with the delay line on) per device namespace.
Per directed path, one at a time so paths never share a link: a stream of a few MB from the
sender's agent to the receiver's (rate: the slope of payload bytes received against arrival
time, from the first message's arrival on, so connection set-up and the shaper's initial burst do
not count), then a ping-pong of small messages over the same pair (latency: half the median round
trip). What a peer would see, including zmq's framing and TCP/IP headers (goodput is ~96% of
the line rate on 1500-byte frames). Other load on the machine can only slow a path down, never
speed it up, so a path that measures clearly below its configuration is measured again (up to
three tries, the best kept, `attempts` says how many).
"""
from __future__ import annotations

import itertools
import json
import math
import queue
import statistics
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from .harness import NetHarness
from .links import Path
from .processes import python_command
from .topology import DATA_PORT

__all__ = ["check_network", "format_table"]

CHUNK_BYTES = 128 * 1024
MIN_BYTES, MAX_BYTES = 2 * 1024 * 1024, 48 * 1024 * 1024
PINGS = 12
# A path measured below this share of its rate, or more than LATE_MS above its latency, is measured
# again (at most ATTEMPTS times in all): TCP/IP headers alone cost ~4% of the rate, and the data plane's
# own round trip (threads, zmq, the kernel) ~0.5 ms; anything beyond that is noise.
GOOD_ENOUGH = 0.93
LATE_MS = 1.25
ATTEMPTS = 3
_REPLY_S = 180.0


class _Agent:
    """One agent process and a thread reading its answers (so a wait can time out)."""

    def __init__(self, name: str, process: subprocess.Popen[Any], log: Callable[[], str]) -> None:
        self.name, self.process, self._log = name, process, log
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def ask(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self, timeout: float = _REPLY_S) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"agent {self.name} gave no answer within {timeout:.0f} s\n{self._log()}") from None
        if not line:
            raise RuntimeError(f"agent {self.name} exited (code {self.process.poll()})\n{self._log()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"agent {self.name}: {reply['error']}")
        return reply


def check_network(net: NetHarness, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure every directed path of `net`; one dict per path (the `--json` contract)."""
    agents: dict[str, _Agent] = {}
    for device, node in net.topology.devices.items():
        latency = net.latency_file(device)
        args = python_command("swarm.netsim.agent", "--name", device, "--host", node.address, "--port", str(DATA_PORT),
                              *(["--link-latency", str(latency)] if latency else []))
        name = f"agent-{node.netns}"
        process = net.processes.start(name, node.netns, args, pipe=True)
        agents[device] = _Agent(device, process, lambda n=name: net.processes.log(n))  # type: ignore[misc]
    for agent in agents.values():
        agent.answer(timeout=120.0)  # ready: its transport is bound
    addresses = {device: node.data_address for device, node in net.topology.devices.items()}
    for device, agent in agents.items():
        agent.ask({"op": "connect", "peers": {n: a for n, a in addresses.items() if n != device}})
        agent.answer()
    results = []
    tags = itertools.count(1)
    for path in net.paths:
        sender, receiver = agents[path.src], agents[path.dst]
        mbps, measured, attempts = 0.0, math.inf, 0
        while attempts < ATTEMPTS:  # noise (other load) only ever slows a path down: keep the best try
            attempts += 1
            mbps = max(mbps, _rate(sender, receiver, path, next(tags)))
            rtts = _round_trips(sender, receiver, next(tags))
            measured = min(measured, statistics.median(rtts[1:]) / 2 * 1e3)
            if (mbps >= GOOD_ENOUGH * path.mbps or not path.shaped) and measured <= path.latency_ms + LATE_MS:
                break
        results.append({"from": path.src, "to": path.dst, "configured_mbps": round(path.mbps, 3),
                        "measured_mbps": round(mbps, 3), "shaped": path.shaped, "attempts": attempts,
                        "latency_ms": {"configured": round(path.latency_ms, 3), "measured": round(measured, 3)}})
        say(f"  {path.src} -> {path.dst}: {mbps:.1f} of {path.mbps:.1f} Mbit/s, {measured:.2f} ms "
            f"(configured {path.latency_ms:.2f} ms)")
    for agent in agents.values():
        agent.ask({"op": "quit"})
    return results


def _rate(sender: _Agent, receiver: _Agent, path: Path, tag: int) -> float:
    """Mbit/s of zmq payload from `sender` to `receiver` (a stream of about 1.5 s at the configured rate)."""
    nbytes = min(MAX_BYTES, max(MIN_BYTES, path.mbps * 1e6 / 8 * 1.5))
    count = max(8, math.ceil(nbytes / CHUNK_BYTES))
    receiver.ask({"op": "sink", "from": sender.name, "tag": tag, "count": count})
    receiver.answer()
    sender.ask({"op": "stream", "to": receiver.name, "tag": tag, "count": count, "bytes": CHUNK_BYTES})
    sender.answer()
    done = receiver.answer()
    return _slope_mbps(done["arrivals"], done["sizes"])


def _slope_mbps(arrivals: list[float], sizes: list[int]) -> float:
    """Mbit/s as the least-squares slope of bytes received against arrival time, from the first message on.

    A slope, not (bytes / first-to-last time): one late wake-up of the receiving thread at either
    end of the stream does not bend it, a link that really stalls does.
    """
    received, total = [], 0
    for size in sizes[1:]:
        total += size
        received.append(total)
    times = arrivals[1:]
    if len(times) < 2:
        return 0.0
    mean_t, mean_b = statistics.fmean(times), statistics.fmean(received)
    var = sum((t - mean_t) ** 2 for t in times)
    cov = sum((t - mean_t) * (b - mean_b) for t, b in zip(times, received, strict=True))
    return cov / max(var, 1e-18) * 8 / 1e6


def _round_trips(sender: _Agent, receiver: _Agent, tag: int) -> list[float]:
    receiver.ask({"op": "echo", "from": sender.name, "tag": tag, "count": PINGS})
    receiver.answer()
    sender.ask({"op": "ping", "to": receiver.name, "tag": tag, "count": PINGS})
    rtts: list[float] = sender.answer()["rtts"]
    receiver.answer()
    return rtts


def format_table(results: list[dict[str, Any]]) -> str:
    """The check as a plain-text table: configured against measured, per path."""
    lines = [f"{'from':>10} {'to':>10} {'Mbit/s set':>11} {'measured':>9} {'ratio':>6} {'ms set':>7} {'measured':>9}"]
    for row in results:
        ratio = row["measured_mbps"] / row["configured_mbps"] if row["configured_mbps"] else math.nan
        lines.append(f"{row['from']:>10} {row['to']:>10} {row['configured_mbps']:>11.1f} {row['measured_mbps']:>9.1f} "
                     f"{ratio:>6.3f} {row['latency_ms']['configured']:>7.2f} {row['latency_ms']['measured']:>9.2f}")
    return "\n".join(lines)
