"""Naming (and optionally evicting) a replica whose gradients its own stage keeps refusing.

Each replica's all-reduce flags the senders of gradient shares it refused or judged outliers
(`PeerRecord.suspects`, cumulative). One flag is noise (small-batch gradients are heavy-tailed:
honest shares get flagged now and then); a peer flagged at the same committed step by most of
the other replicas of its stage is a strike, and `evict_after` strikes in a row (`--evict-suspects`)
evict it. The coordinator names every struck peer in its log and report either way.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from peers.protocol import PeerRecord, PlanRecord

__all__ = ["SuspectTracker"]


class SuspectTracker:
    """evict_after: consecutive strikes that evict a peer (0: only name it); `report_event(what, **details)`
    and `on_event(text)` hear of each suspect (the run report and the coordinator's log)."""

    def __init__(self, evict_after: int, report_event: Callable[..., Any], on_event: Callable[[str], None]) -> None:
        self.evict_after = evict_after
        self.report_event = report_event
        self.on_event = on_event
        self.strikes: Counter[str] = Counter()  # consecutive committed steps struck, by peer
        self.struck: Counter[str] = Counter()  # all strikes this run, by peer (`swarm status`, the report)
        self._seen: dict[str, dict[str, int]] = {}  # reporter -> its suspects at the last commit

    def observe(self, plan: PlanRecord, records: dict[str, PeerRecord]) -> tuple[list[str], list[str]]:
        """After a commit: (peers struck at this step, peers to evict now)."""
        struck: list[str] = []
        for row in plan.grid:
            if len(row) < 3:  # an outlier needs two others to be told from them
                continue
            for name in row:
                reporters = [other for other in row if other != name and other in records]
                flagged = sum(1 for other in reporters if self._grew(other, name, records[other]))
                if 2 * flagged > len(row) - 1:
                    struck.append(name)
        for name in plan.members():
            self.strikes[name] = self.strikes[name] + 1 if name in struck else 0
        self.struck.update(struck)
        self._seen = {name: dict(record.suspects) for name, record in records.items()}
        evict = [name for name in struck if self.evict_after and self.strikes[name] >= self.evict_after]
        return struck, evict

    def judge(self, plan: PlanRecord, records: dict[str, PeerRecord], step: int) -> list[str]:
        """After committing `step`: name each newly struck replica (and each evicted one); the peers to evict."""
        struck, evict = self.observe(plan, records)
        for name in struck:
            if self.strikes[name] == 1 or name in evict:
                self.report_event("suspect", peer=name, step=step, evicted=name in evict)
                self.on_event(f"{name}'s gradients were flagged by most of its stage's replicas at step {step}"
                              + (": evicted" if name in evict else " (--evict-suspects K evicts it)"))
        return evict

    def _grew(self, reporter: str, name: str, record: PeerRecord) -> bool:
        """Whether `reporter` flagged `name` since the last commit."""
        return record.suspects.get(name, 0) > self._seen.get(reporter, {}).get(name, 0)
