"""Counters of a data-plane endpoint, per message kind: what `ZmqTransport.stats()` returns.

The live swarm reports bytes per channel (activations, gradients, all-reduce) from these, and the
churn tests read the drop counters to prove garbage and stale frames were seen and refused.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any

__all__ = ["TransportStats"]

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
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, Counter[str]] = {name: Counter() for name in _PER_KIND}
        self._rejected = 0
        self._last_rejection = ""

    def add(self, table: str, kind: str, amount: int = 1) -> None:
        with self._lock:
            self._tables[table][kind] += amount

    def count_sent(self, kind: str, header_bytes: int, payload_bytes: int) -> None:
        with self._lock:
            self._tables["sent"][kind] += 1
            self._tables["bytes_sent"][kind] += header_bytes + payload_bytes
            self._tables["payload_bytes_sent"][kind] += payload_bytes

    def count_received(self, kind: str, nbytes: int) -> None:
        with self._lock:
            self._tables["received"][kind] += 1
            self._tables["bytes_received"][kind] += nbytes

    def reject(self, reason: str) -> None:
        with self._lock:
            self._rejected += 1
            self._last_rejection = reason

    def snapshot(self) -> dict[str, Any]:
        """{"received": {kind: n}, ..., "rejected_malformed": n, "last_rejection": "why"}."""
        with self._lock:
            tables = {name: dict(counter) for name, counter in self._tables.items()}
            return {**tables, "rejected_malformed": self._rejected, "last_rejection": self._last_rejection}
