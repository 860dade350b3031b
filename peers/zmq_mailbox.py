"""The receive side's gate: only messages of the current plan, within a memory budget, get in.

A peer's data port is open to anyone, and neighbours may switch plans a moment before or after
this peer does. So every arriving data message passes one check before the engine can see it:
  - an older plan version: dropped and counted ("dropped_stale"), that plan is over;
  - a newer plan version: held until this peer adopts that version (bounded; beyond that
    "dropped_future"), so a fast neighbour's first messages of a new plan are not lost;
  - the current version: into the `Mailbox`, unless the bytes delivered but not yet claimed would
    pass `max_bytes` ("dropped_overflow"): a flood or a runaway sender cannot exhaust memory, it
    only makes the engine time out and abort the step.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from peers.transport import Mailbox, Message

__all__ = ["GatedMailbox"]

_MAX_HELD_MESSAGES = 1024


class GatedMailbox:
    """A `Mailbox` behind the plan-version check and a byte budget; `on_drop(counter, kind)` counts."""

    def __init__(self, version: int, max_bytes: int, on_drop: Callable[[str, str], None]) -> None:
        self.max_bytes = max_bytes
        self._version = version
        self._on_drop = on_drop
        self._mailbox = Mailbox()
        self._lock = threading.Lock()
        self._held: list[Message] = []
        self._sizes: dict[tuple[str, str, int, int], int] = {}
        self._bytes = 0

    @property
    def version(self) -> int:
        return self._version

    def set_version(self, version: int) -> None:
        """Adopt `version`: held messages of it are delivered, older ones dropped as stale."""
        with self._lock:
            self._version = version
            held, self._held = self._held, []
        for message in held:
            self.deliver(message)

    def deliver(self, message: Message) -> None:
        size = memoryview(message.payload).nbytes
        with self._lock:
            if message.plan_version > self._version:
                held_bytes = sum(memoryview(held.payload).nbytes for held in self._held)
                if len(self._held) < _MAX_HELD_MESSAGES and held_bytes + size <= self.max_bytes:
                    self._held.append(message)
                    return
                verdict = "dropped_future"
            elif message.plan_version < self._version:
                verdict = "dropped_stale"
            else:
                key = (message.sender, message.kind, message.step, message.index)
                replaced = self._sizes.get(key, 0)
                if self._bytes - replaced + size > self.max_bytes:
                    verdict = "dropped_overflow"
                else:
                    self._bytes += size - replaced
                    self._sizes[key] = size
                    self._mailbox.put(message)
                    return
        self._on_drop(verdict, message.kind)

    def take(self, sender: str, kind: str, step: int, index: int, timeout: float | None) -> Message:
        message = self._mailbox.take(sender, kind, step, index, timeout)
        with self._lock:
            self._bytes -= self._sizes.pop((sender, kind, step, index), 0)
        return message

    def discard_before(self, step: int) -> int:
        with self._lock:
            count = self._mailbox.discard_before(step)
            for key in [key for key in self._sizes if key[2] < step]:
                self._bytes -= self._sizes.pop(key)
        return count

    def close(self, reason: str) -> None:
        self._mailbox.close(reason)

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def unclaimed_bytes(self) -> int:
        with self._lock:
            return self._bytes
