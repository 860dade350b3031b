"""Counters of a data-plane endpoint, per message kind: what `ZmqTransport.stats()` returns.

The live swarm reports bytes per channel (activations, gradients, all-reduce) from these, and the
churn tests read the drop counters to prove garbage and stale frames were seen and refused.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from peers.wire import CONTROL_KINDS, TRAINING_KINDS

__all__ = ["TransportStats", "MAX_KINDS", "OTHER_KIND"]

# Kinds are chosen by whoever sends: the swarm's own kinds always get their row; past MAX_KINDS
# other distinct ones, new kinds count under OTHER_KIND, so garbage with made-up kinds can neither
# grow the tables without bound nor push the real traffic into OTHER_KIND.
_OWN_KINDS = TRAINING_KINDS | CONTROL_KINDS
MAX_KINDS = 64
OTHER_KIND = "(other)"

_PER_KIND = ("received", "bytes_received", "sent", "bytes_sent", "payload_bytes_sent",
             "send_failed", "dropped_stale", "dropped_future", "dropped_overflow")


class TransportStats:
    """Thread-safe counters; `snapshot()` is a plain JSON-ready dict.

    received counts every well-formed message (probes and state requests included) before the
    plan-version check, whose drops land in dropped_stale / dropped_future (and dropped_overflow
    past the unclaimed-bytes budget, see `peers.zmq_mailbox`); frames that fail to
    parse count only in rejected_malformed. bytes_* count header and payload frames (what crossed
    the wire, less zmq's own framing); payload_bytes_sent counts the compression frames alone, to
    compare with codec bit-widths. send_failed: messages zmq refused (its error is logged).
    At most MAX_KINDS kinds are told apart; later new kinds share the row OTHER_KIND.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, Counter[str]] = {name: Counter() for name in _PER_KIND}
        self._kinds: set[str] = set()
        self._rejected = 0
        self._last_rejection = ""

    def add(self, table: str, kind: str, amount: int = 1) -> None:
        """Add `amount` to counter `table` (one of the per-kind tables) for `kind`."""
        with self._lock:
            self._tables[table][self._row(kind)] += amount

    def count_sent(self, kind: str, header_bytes: int, payload_bytes: int) -> None:
        """One message handed to zmq: its count, wire bytes and compression-frame bytes."""
        with self._lock:
            kind = self._row(kind)
            self._tables["sent"][kind] += 1
            self._tables["bytes_sent"][kind] += header_bytes + payload_bytes
            self._tables["payload_bytes_sent"][kind] += payload_bytes

    def count_received(self, kind: str, nbytes: int) -> None:
        """One well-formed message arrived (`nbytes` over both frames)."""
        with self._lock:
            kind = self._row(kind)
            self._tables["received"][kind] += 1
            self._tables["bytes_received"][kind] += nbytes

    def reject(self, reason: str) -> None:
        """A frame that failed to parse or was not allowed; `reason` is kept as last_rejection."""
        with self._lock:
            self._rejected += 1
            self._last_rejection = reason

    def snapshot(self) -> dict[str, Any]:
        """{"received": {kind: n}, ..., "rejected_malformed": n, "last_rejection": "why"}."""
        with self._lock:
            tables = {name: dict(counter) for name, counter in self._tables.items()}
            return {**tables, "rejected_malformed": self._rejected, "last_rejection": self._last_rejection}

    def _row(self, kind: str) -> str:
        """The table row for `kind` (call with the lock held)."""
        if kind in _OWN_KINDS or kind in self._kinds:
            return kind
        if len(self._kinds) < MAX_KINDS:
            self._kinds.add(kind)
            return kind
        return OTHER_KIND
