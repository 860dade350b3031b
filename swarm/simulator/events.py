"""A minimal discrete-event core: a clock and a heap of timed callbacks.

Ties are broken by insertion order, so a run is deterministic for a given seed.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable

__all__ = ["EventQueue"]


class EventQueue:
    """Callbacks scheduled at absolute times, run in time order by `run()`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.processed = 0
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()

    def at(self, time: float, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback(*args)` at `time` (never before the current time)."""
        heapq.heappush(self._heap, (max(time, self.now), next(self._order), callback, args))

    def run(self) -> float:
        """Process every event; returns the time of the last one."""
        while self._heap:
            self.now, _, callback, args = heapq.heappop(self._heap)
            self.processed += 1
            callback(*args)
        return self.now
