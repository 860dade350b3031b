"""Measuring links from the training traffic itself, with no probe: a request timed to its response.

Two of the data plane's exchanges are a request answered by a response on the same link:
activations (`act`) come back as their gradients (`grad`, same step and micro-batch), and an
all-reduce share sent to its chunk's owner (`ar-reduce`) comes back as the owner's broadcast of
that chunk (`ar-gather`, same step and index). The requester times the pair from its send of
the request to the response's arrival; the responder stamps into the response's header how long
it held the request (`held_us`: from its arrival to the send of the response, on the responder's
clock). What is left is the link's doing (sends queued behind earlier ones on the same link, and
the emulated latency of a delay line, included), and the two clocks never meet:

    round trip - held = 2 x latency + (request bytes + response bytes) / bandwidth (+ queueing)

`LinkMeter` keeps each neighbour's last `window` such samples; `bandwidth_gbps(peer, latency_s,
probed_gbps)` takes the best (queueing only ever adds time) of those whose transfer took at least
MIN_TRANSFER_S, and would have at the probed rate too: below that a busy CPU's scheduling noise
is as large as the transfer (on a 2-core host it delays a loopback message by tens of ms). Fast
links are left to the probes; slow ones, where it matters, are read from what they carry.
A forged `held_us` can only spoil the reading of the link to its own sender.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from peers.dataplane.wire import ACT_KIND, GATHER_KIND, GRAD_KIND, REDUCE_KIND

__all__ = ["LinkMeter", "REQUEST_OF", "MIN_TRANSFER_S", "MIN_SAMPLES"]

REQUEST_OF = {GRAD_KIND: ACT_KIND, GATHER_KIND: REDUCE_KIND}  # response kind -> the request kind it answers
MIN_TRANSFER_S = 0.02  # at 5 ms, a 50 Mbit/s run once read a healthy link at half its rate (CPU waits)
MIN_SAMPLES = 4  # qualifying samples a reading needs: one can be a lucky outlier
_MAX_OPEN = 4096  # requests remembered (sent and not answered, or received and not answered yet)

_Key = tuple[str, str, int, int]  # (peer, request kind, step, index)
_V = TypeVar("_V")


@dataclass(frozen=True)
class Sample:
    """One request and its response: bytes both ways, and the seconds the link took for them."""

    nbytes: int
    seconds: float


class LinkMeter:
    """Per-neighbour samples of request/response pairs; thread-safe (the loop thread records, others read).

    clock: seconds, monotonic (time.monotonic; tests pass their own).
    """

    def __init__(self, clock: Callable[[], float], window: int = 16) -> None:
        self._clock = clock
        self._window = window
        self._lock = threading.Lock()
        self._sent: dict[_Key, tuple[float, int]] = {}  # request this peer sent: (sent at, bytes)
        self._arrived: dict[_Key, float] = {}  # request a neighbour sent here: arrived at
        self._samples: dict[str, deque[Sample]] = {}

    def sent(self, to: str, kind: str, step: int, index: int, nbytes: int) -> None:
        """A message was sent to `to` (queued for its link): a request starts its clock."""
        if kind in REQUEST_OF.values():
            with self._lock:
                _remember(self._sent, (to, kind, step, index), (self._clock(), nbytes))

    def held_us(self, to: str, kind: str, step: int, index: int) -> int | None:
        """For a response about to leave for `to`: microseconds since its request arrived (None: not a
        response, or its request never came here)."""
        request = REQUEST_OF.get(kind)
        if request is None:
            return None
        with self._lock:
            arrived = self._arrived.pop((to, request, step, index), None)
        return None if arrived is None else max(0, round((self._clock() - arrived) * 1e6))

    def arrived(self, sender: str, kind: str, step: int, index: int, nbytes: int, held_us: int | None) -> None:
        """A message from `sender` was received: a request is remembered for its response's `held_us`,
        a response with `held_us` completes a sample of the link to `sender`."""
        now = self._clock()
        request = REQUEST_OF.get(kind)
        with self._lock:
            if request is None:
                if kind in REQUEST_OF.values():
                    _remember(self._arrived, (sender, kind, step, index), now)
                return
            started = self._sent.pop((sender, request, step, index), None)
            if started is None or held_us is None:
                return
            seconds = now - started[0] - held_us / 1e6
            if seconds > 0:
                samples = self._samples.setdefault(sender, deque(maxlen=self._window))
                samples.append(Sample(started[1] + nbytes, seconds))

    def bandwidth_gbps(self, peer: str, latency_s: float, probed_gbps: float | None = None) -> float | None:
        """The link to `peer` as its traffic shows it, given its one-way latency: the best rate of the
        samples whose transfer (round trip less held, less 2 x latency) took MIN_TRANSFER_S or more, and
        would have at `probed_gbps` too (a sample a fast link carries in less is the CPU's noise, however
        long it took); None with fewer than MIN_SAMPLES of those."""
        with self._lock:
            samples = list(self._samples.get(peer, ()))
        big_enough = MIN_TRANSFER_S * probed_gbps * 1e9 / 8 if probed_gbps else 0.0
        rates = [sample.nbytes * 8 / transfer / 1e9 for sample in samples
                 if (transfer := sample.seconds - 2 * latency_s) >= MIN_TRANSFER_S and sample.nbytes >= big_enough]
        return max(rates) if len(rates) >= MIN_SAMPLES else None

    def fastest_round_trip_s(self, peer: str) -> float | None:
        """The shortest sample to `peer` (round trip less held): at least twice the link's latency."""
        with self._lock:
            samples = self._samples.get(peer, ())
            return min((sample.seconds for sample in samples), default=None)

    def peers(self) -> list[str]:
        """The neighbours with samples."""
        with self._lock:
            return list(self._samples)


def _remember(table: dict[_Key, _V], key: _Key, value: _V) -> None:
    """Store `value` under `key`, forgetting the oldest entry past _MAX_OPEN (lost responses never pile up)."""
    if len(table) >= _MAX_OPEN and key not in table:
        del table[next(iter(table))]
    table[key] = value
