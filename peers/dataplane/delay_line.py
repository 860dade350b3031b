"""The data plane's delay line: one-way link latency added in user space.

The network harness (`swarm-sim net`) shapes bandwidth with the kernel's queueing disciplines, but
a kernel without `netem` cannot delay packets. So `ZmqTransport` can hold each message to a
destination until `latency` seconds after `send` was called and only then hand it to zmq: the
sender never blocks (the message waits on the transport's loop thread, in its link's FIFO), and a
link is never reordered because one link has one latency. A ping answered by a transport with a
delay line is answered after the round trip to the pinging host, so the peers' link probes see
the emulated latency too.

Off by default, and free when off: the transport then never looks at a clock on a send. The
harness switches it on with `swarm-peer join --link-latency FILE`, FILE being a JSON object
{"tcp://HOST:PORT": one-way milliseconds} keyed by destination data address.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peers.dataplane.client import check_address

__all__ = ["DelayLine", "hold"]

MAX_LATENCY_MS = 60_000.0
_POLL_S = 0.0005  # the last stretch of a hold is polled, not timed (see `hold`)


class DelayLine:
    """One-way latency per destination data address (seconds inside, milliseconds in files)."""

    def __init__(self, latency_ms: Mapping[str, float]) -> None:
        self._seconds: dict[str, float] = {}
        self._hosts: dict[str, float] = {}
        for address, ms in latency_ms.items():
            check_address(address, what="--link-latency address")
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) \
                    or not 0 <= ms <= MAX_LATENCY_MS:
                raise ValueError(f"--link-latency: the latency of {address} must be a number of milliseconds in "
                                 f"0..{MAX_LATENCY_MS:g}, got {ms!r}")
            if ms > 0:
                self._seconds[address] = ms / 1e3
                self._hosts[address[len("tcp://"):].rsplit(":", 1)[0].strip("[]")] = ms / 1e3

    @classmethod
    def load(cls, path: str | Path) -> DelayLine:
        """Read a `--link-latency` file; ValueError saying what is wrong with it."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as error:
            raise ValueError(f"--link-latency: cannot read {str(path)!r}: {error.strerror}") from None
        except ValueError as error:
            raise ValueError(f"--link-latency: {str(path)!r} is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"--link-latency: {str(path)!r} must hold a JSON object "
                             '{"tcp://HOST:PORT": one-way ms, ...}')
        return cls(data)

    def seconds(self, address: str) -> float:
        """One-way seconds of the link to `address` (0.0 when it has none)."""
        return self._seconds.get(address, 0.0)

    def due(self, address: str) -> float:
        """When a message sent now to `address` may leave (`time.monotonic()` time; 0.0: at once)."""
        seconds = self._seconds.get(address)
        return time.monotonic() + seconds if seconds else 0.0

    def round_trip(self, host: str | None) -> float:
        """Seconds to hold a pong to `host`: both directions, since the ping itself was not delayed."""
        return 2 * self._hosts.get(host or "", 0.0)

    def pong(self, ping: Any) -> float:
        """`round_trip` to the host a ping (a received zmq frame, which knows its "Peer-Address") came from."""
        try:
            host = ping.get("Peer-Address")
        except Exception:  # zmq raises for frames without metadata (inproc, or already closed)
            return 0.0
        if not isinstance(host, str):
            return 0.0
        return self.round_trip(host.removeprefix("::ffff:"))  # IPv6 sockets see IPv4 peers as ::ffff:a.b.c.d

    def __bool__(self) -> bool:
        return bool(self._seconds)

    def to_dict(self) -> dict[str, float]:
        """The map as a `--link-latency` file holds it (milliseconds)."""
        return {address: seconds * 1e3 for address, seconds in self._seconds.items()}


async def hold(due: float) -> None:
    """Return once `time.monotonic()` has reached `due`, typically within 0.05 ms.

    uvloop's timers count whole milliseconds (a plain sleep lands ~0.3 ms late on average), so the
    timer aims half a millisecond early and the rest is spent yielding to the loop: at most about
    a millisecond of polling per message, in which other tasks and threads keep running.
    """
    while (remaining := due - time.monotonic()) > _POLL_S:
        await asyncio.sleep(remaining - _POLL_S)
    while time.monotonic() < due:
        await asyncio.sleep(0)
