"""Counters of a data-plane endpoint, per message kind: what `ZmqTransport.stats()` returns.

The live swarm reports bytes per channel (activations, gradients, all-reduce) from these, and the
churn tests read the drop counters to prove garbage and stale frames were seen and refused.
Refused messages count under `rejected`, by why (`peers.dataplane.transport.REJECTIONS`).
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from peers.dataplane.transport import REJECTIONS
from peers.dataplane.wire import CONTROL_KINDS, TRAINING_KINDS

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
    past the unclaimed-bytes budget, see `peers.dataplane.gate`). rejected counts refusals by
    category (REJECTIONS): frames that fail to parse ("malformed", counted only there), a second
    message under a held key ("duplicate"), a sender past its in-flight share ("flood"), and what
    the engine refused after decoding (`BadMessage`: "malformed", "nonfinite"); last_rejection
    says what the latest one was and who sent it. bytes_* count header and payload frames (what crossed
    the wire, less zmq's own framing); payload_bytes_sent counts the compression frames alone, to
    compare with codec bit-widths. send_failed: messages zmq refused (its error is logged).
    At most MAX_KINDS kinds are told apart; later new kinds share the row OTHER_KIND.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, Counter[str]] = {name: Counter() for name in _PER_KIND}
        self._kinds: set[str] = set()
        self._rejected: Counter[str] = Counter()
        self._last_rejection = ""

    def add(self, table: str, kind: str, detail: str = "") -> None:
        """Count one `kind` message in `table`: a per-kind table, or a category of REJECTIONS
        (then it counts under `rejected`, and `detail` becomes last_rejection; see `reject`).

        The signature of `peers.dataplane.gate.OnDrop`, so the receive gate counts straight into these.
        """
        if table in REJECTIONS:
            self.reject(detail or f"{table} {kind!r} message", table)
            return
        with self._lock:
            self._tables[table][self._row(kind)] += 1

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

    def reject(self, detail: str, category: str = "malformed") -> None:
        """One refused message, counted under `rejected[category]` (one of REJECTIONS); `detail`
        (what was wrong, and from whom) is kept as last_rejection."""
        if category not in REJECTIONS:
            raise ValueError(f"unknown rejection category {category!r}; expected one of {REJECTIONS}")
        with self._lock:
            self._rejected[category] += 1
            self._last_rejection = detail

    def snapshot(self) -> dict[str, Any]:
        """{"received": {kind: n}, ..., "rejected": {category: n for every REJECTIONS}, "last_rejection": "why"}."""
        with self._lock:
            tables = {name: dict(counter) for name, counter in self._tables.items()}
            rejected = {category: self._rejected[category] for category in REJECTIONS}
            return {**tables, "rejected": rejected, "last_rejection": self._last_rejection}

    def _row(self, kind: str) -> str:
        """The table row for `kind` (call with the lock held)."""
        if kind in _OWN_KINDS or kind in self._kinds:
            return kind
        if len(self._kinds) < MAX_KINDS:
            self._kinds.add(kind)
            return kind
        return OTHER_KIND
