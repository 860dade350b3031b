"""The newest control record and plan a peer knows, whichever way they came.

Two sources feed it: the heartbeat thread's reads of the DHT (authoritative; every 0.2 s while no
push arrives, else once a heartbeat) and the coordinator's pushes over the step channel
(`peers.step_channel`, right after each decision). The training thread never reads the DHT: it
waits here and is woken the moment either source brings something newer, so a commit reaches it
in one zmq hop, not a DHT round trip plus a poll.
"""
from __future__ import annotations

import threading

from peers.protocol import ControlRecord, PlanRecord

__all__ = ["ControlFeed"]


def _progress(control: ControlRecord) -> tuple[int, int, bool]:
    """How far the protocol is: a newer plan, then a later commit, then the end (a rollback's new plan
    outranks the later steps of the plan it replaces)."""
    return control.plan_version, control.committed_step, control.done


class ControlFeed:
    """Thread-safe. `offer` keeps what is newer; `wait(seen)` returns once the feed moved past `seen`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._serial = 0
        self._control: ControlRecord | None = None
        self._plan: PlanRecord | None = None

    def offer(self, control: ControlRecord | None, plan: PlanRecord | None = None) -> bool:
        """Take `control` unless an older one, `plan` if newer than the plan held; True when anything changed."""
        with self._cond:
            changed = False
            if control is not None and control != self._control and (
                    self._control is None or _progress(control) >= _progress(self._control)):
                self._control, changed = control, True
            if plan is not None and (self._plan is None or plan.version > self._plan.version):
                self._plan, changed = plan, True
            if changed:
                self._serial += 1
                self._cond.notify_all()
            return changed

    def snapshot(self) -> tuple[int, ControlRecord | None, PlanRecord | None]:
        """(serial, control record, plan) as of now: pass the serial to `wait`."""
        with self._cond:
            return self._serial, self._control, self._plan

    def wake(self) -> None:
        """Wake every waiter (a stop, an abort) as if something had changed."""
        with self._cond:
            self._serial += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float = 1.0) -> None:
        """Until the feed moved past serial `seen` (or `timeout`: a waiter re-checks its stop flag)."""
        with self._cond:
            self._cond.wait_for(lambda: self._serial != seen, timeout)
