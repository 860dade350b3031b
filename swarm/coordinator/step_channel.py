"""The coordinator's half of the step channel (`peers.step_channel`), and its DHT calls off the loop.

The loop decides from records; a step's records must reach it in one zmq hop, not a DHT round trip
plus a poll. So:
- `RecordReader` (a thread) re-reads the peer records from the DHT every `period` seconds: the view
  that shows who joined, left or expired;
- `StepReports` takes each peer's signed step report from the coordinator's data port the moment it
  arrives and wakes the loop; `merged` lays the reports over the DHT view (the newer stamp wins);
- `push` sends each decision (control record, new plan) back to every peer that reported;
- `ControlWriter` (a thread) stores the latest control record in the DHT for everyone else: a store
  takes 0.1-0.2 s on a busy host, and the loop, waiting on it, would hold up the next commit.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import Any

from peers.daemon.records import publish_coordinator
from peers.dataplane import wire
from peers.dataplane.transport import BadMessage, Message
from peers.dataplane.zmq_transport import ZmqTransport
from peers.dht import SwarmDHT
from peers.protocol import CONTROL_KEY, ControlRecord, PeerRecord, PlanRecord
from peers.step_channel import control_payload, verify_report

from .admission import Gatekeeper

__all__ = ["StepReports", "RecordReader", "ControlWriter"]

log = logging.getLogger(__name__)


class StepReports:
    """Verified step reports by peer name; wakes whoever `wait`s when one arrives."""

    def __init__(self, transport: ZmqTransport, gatekeeper: Gatekeeper) -> None:
        self._transport, self._gatekeeper = transport, gatekeeper
        self._cond = threading.Condition()
        self._records: dict[str, PeerRecord] = {}
        self._news = False
        self._sent_plan: dict[str, int] = {}  # the plan version each peer was last pushed
        transport.reports.listen(self._received)

    def _received(self, message: Message) -> bool:
        bound = self._gatekeeper.admitted.get(message.sender)
        if bound is None:  # not admitted (yet): its DHT record comes first
            return False
        try:
            record = verify_report(message, bound.owner)
        except BadMessage as error:
            self._transport.count_rejection(error.reason, str(error))
            log.warning("ignoring a step report: %s", error)
            return False
        with self._cond:
            held = self._records.get(record.name)
            if held is None or record.heartbeat >= held.heartbeat:
                self._records[record.name] = record
            self._news = True
            self._cond.notify_all()
        return True

    def wake(self) -> None:
        """Wake the waiter as a report would (the DHT view changed)."""
        with self._cond:
            self._news = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        """Until a report arrives or `wake` is called (at most `timeout` seconds)."""
        with self._cond:
            self._cond.wait_for(lambda: self._news, timeout)
            self._news = False

    def merged(self, records: dict[str, PeerRecord]) -> dict[str, PeerRecord]:
        """The DHT's `records`, each replaced by its peer's report when that is newer. Only names the DHT
        shows count: liveness and admission stay the DHT's."""
        with self._cond:
            reports = dict(self._records)
        return {name: report if (report := reports.get(name)) is not None and report.heartbeat > record.heartbeat
                else record for name, record in records.items()}

    def push(self, control: ControlRecord, plan: PlanRecord | None) -> None:
        """`control` to every peer that reported, with `plan` to those not sent it yet."""
        for name in self._transport.reports.names():
            news = plan if plan is not None and self._sent_plan.get(name) != plan.version else None
            if self._transport.push(name, wire.STEP_CONTROL, control_payload(control, news)) and news is not None:
                self._sent_plan[name] = news.version


class RecordReader:
    """A thread re-reading the genuine peer records (`Gatekeeper.read`) every `period` seconds.

    fresh(): the names whose buckets every read must include (the plan's members); on_read(): called
    after each read (wakes the loop). `records` is None until the first read finished.
    """

    def __init__(self, gatekeeper: Gatekeeper, dht: SwarmDHT, fresh: Callable[[], Collection[str]],
                 on_read: Callable[[], None], period: float) -> None:
        self.records: dict[str, PeerRecord] | None = None
        self._gatekeeper, self._dht, self._fresh, self._on_read, self._period = gatekeeper, dht, fresh, on_read, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="records", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.records = self._gatekeeper.read(self._dht, fresh=self._fresh())
            except Exception:  # one failed read must not end the coordinator's view of the swarm
                log.exception("reading the peer records failed; reading again")
            self._on_read()
            self._stop.wait(self._period)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)


class ControlWriter:
    """A thread storing the newest control record `offer`ed in the DHT; an older one not stored yet
    is skipped (the newest says everything it did). Stores are at least `spacing` seconds apart: the
    peers get every decision pushed, the DHT copy is for the others and need not follow each step."""

    def __init__(self, dht: SwarmDHT, spacing: float = 0.5) -> None:
        self._dht, self._spacing = dht, spacing
        self._cond = threading.Condition()
        self._newest: dict[str, Any] | None = None
        self._storing = self._closed = False
        self._thread = threading.Thread(target=self._run, name="control-writer", daemon=True)
        self._thread.start()

    def offer(self, control: ControlRecord, wait_s: float = 0.0) -> None:
        """Store `control` soon; with `wait_s`, wait until it is stored (at most that long)."""
        with self._cond:
            self._newest = control.to_wire()
            self._cond.notify_all()
            if wait_s > 0:
                self._cond.wait_for(lambda: self._newest is None and not self._storing, wait_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._newest is not None or self._closed)
                if self._newest is None:  # closed, everything stored
                    return
                control, self._newest, self._storing = self._newest, None, True
            try:
                publish_coordinator(self._dht, CONTROL_KEY, control)
            except Exception:  # the next offer (at least once a second) stores it again
                log.exception("storing the control record in the DHT failed")
            with self._cond:
                self._storing = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._closed, self._spacing)  # closing stores what is pending at once

    def close(self) -> None:
        """Store what is pending, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10.0)
