"""Failure attribution: which peer to evict when the same grid keeps failing, and when to let it back.

A failed step is reported by the peer that noticed: the neighbour that timed out waiting, the
replica that got an unusable gradient share. Its record names the peer it blames
(`PeerRecord.blamed`: the silent or misbehaving neighbour, or itself for its own fault). A
reporter that still holds its stage keeps its cell, so without attribution one broken one-way
link would make the coordinator republish the same grid forever. `Blame` counts the failures
of each grid shape in a row (a committed step clears them) with the peers they name, and after
`after` of them names the peer most often blamed; `Evictions` keeps evicted peers out for a
back-off that doubles each time the same peer is evicted, then lets them back as newcomers.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable

from peers.protocol import Departure

__all__ = ["Blame", "Evictions", "MAX_BACKOFF_S"]

MAX_BACKOFF_S = 600.0
Grid = tuple[tuple[str, ...], ...]


class Blame:
    """after: failures of one grid shape, in a row, that evict the peer most often named."""

    def __init__(self, after: int) -> None:
        if after < 1:
            raise ValueError(f"--evict-after must be at least 1, got {after}")
        self.after = after
        self._failures: Counter[Grid] = Counter()
        self._named: dict[Grid, Counter[str]] = {}

    def failed(self, grid: Iterable[Iterable[str]], named: Iterable[str]) -> str | None:
        """One more failure of `grid`, naming `named` (one entry per report); the peer to evict, if any."""
        shape = tuple(tuple(row) for row in grid)
        members = {name for row in shape for name in row}
        self._failures[shape] += 1
        self._named.setdefault(shape, Counter()).update(name for name in named if name in members)
        if self._failures[shape] < self.after or not self._named[shape]:
            return None
        most = max(self._named[shape].values())
        culprit = min(name for name, count in self._named[shape].items() if count == most)  # ties: by name
        del self._failures[shape], self._named[shape]
        return culprit

    def succeeded(self) -> None:
        """A step committed: the failures before it were not one fault repeating."""
        self._failures.clear()
        self._named.clear()


class Evictions:
    """Peers kept out of the grid for now (timed out, blamed, suspected), each until its back-off ends.

    backoff_s: the first eviction's; each later eviction of the same peer doubles it, up to
    `MAX_BACKOFF_S`. `clock` is injectable for tests.
    """

    def __init__(self, backoff_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff_s = backoff_s
        self._clock = clock
        self._until: dict[str, float] = {}
        self._why: dict[str, Departure] = {}
        self.count: Counter[str] = Counter()  # evictions this run, by peer

    def add(self, name: str, why: Departure) -> float:
        """Evict `name` (again) for `why`; returns how long it stays out."""
        self.count[name] += 1
        seconds = min(MAX_BACKOFF_S, self.backoff_s * 2.0 ** (self.count[name] - 1))
        self._until[name] = self._clock() + seconds
        self._why[name] = why
        return seconds

    def update(self, names: Iterable[str], why: Departure) -> None:
        for name in names:
            self.add(name, why)

    def cause(self, name: str) -> Departure:
        """Why `name` was evicted last."""
        return self._why[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._until.get(name, 0.0) > self._clock()

    def released(self) -> list[str]:
        """Peers whose back-off ended since the last call: they may rejoin as newcomers."""
        now = self._clock()
        done = sorted(name for name, until in self._until.items() if until <= now)
        for name in done:
            del self._until[name]
        return done
