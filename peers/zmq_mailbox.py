"""The receive side's gate: only messages of the current plan, within a memory budget, get in.

A peer's data port is open to anyone, and neighbours may switch plans a moment before or after
this peer does. So every arriving data message passes one check before the engine can see it:
  - an older plan version: dropped and counted ("dropped_stale"), that plan is over;
  - a newer plan version: held until this peer adopts that version (bounded; beyond that
    "dropped_future"), so a fast neighbour's first messages of a new plan are not lost;
  - the current version: into the `Mailbox`, unless the bytes delivered but not yet claimed would
    pass `max_bytes`, or the unclaimed messages `max_messages` ("dropped_overflow"; the count
    caps a flood of empty payloads under distinct keys): a flood or a runaway sender cannot
    exhaust memory, it only makes the engine time out and abort the step.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from peers.transport import Mailbox, Message, PeerTimeout

__all__ = ["GatedMailbox"]

_MAX_HELD_MESSAGES = 1024
# Unclaimed messages of the current plan: a step needs one per micro-batch and all-reduce peer,
# far fewer than this; each costs ~1 KB of bookkeeping even with an empty payload.
DEFAULT_MAX_MESSAGES = 16384


class GatedMailbox:
    """A `Mailbox` behind the plan-version check and a byte budget; `on_drop(counter, kind)` counts."""

    def __init__(self, version: int, max_bytes: int, on_drop: Callable[[str, str], None], *,
                 max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self._version = version
        self._on_drop = on_drop
        self._mailbox = Mailbox()
        self._lock = threading.Lock()
        self._held: list[Message] = []
        # key -> (payload bytes, the message itself): take() only releases the bytes of the message
        # it got, even when a same-key message arrives between its mailbox pop and its bookkeeping.
        self._sizes: dict[tuple[str, str, int, int], tuple[int, Message]] = {}
        self._bytes = 0

    @property
    def version(self) -> int:
        """The plan version messages must carry to reach the mailbox."""
        return self._version

    def set_version(self, version: int) -> None:
        """Adopt `version`: held messages of it are delivered, older ones dropped as stale.

        Unclaimed messages of an older version leave the mailbox too (counted as stale), so a
        rerun of the same step under the new plan never takes a leftover of the old one.
        """
        with self._lock:
            self._version = version
            held, self._held = self._held, []
            stale = [(key, message) for key, (_, message) in self._sizes.items() if message.plan_version < version]
            for key, _message in stale:
                self._bytes -= self._sizes.pop(key)[0]
                try:
                    self._mailbox.take(*key, timeout=0)
                except PeerTimeout:  # an engine thread took it a moment ago
                    pass
        for _key, message in stale:
            self._on_drop("dropped_stale", message.kind)
        for message in held:
            self.deliver(message)

    def deliver(self, message: Message) -> None:
        """Gate one arrived message: into the mailbox, held for a newer plan, or dropped and counted."""
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
                replaced = self._sizes[key][0] if key in self._sizes else 0
                if (self._bytes - replaced + size > self.max_bytes
                        or (key not in self._sizes and len(self._sizes) >= self.max_messages)):
                    verdict = "dropped_overflow"
                else:
                    self._bytes += size - replaced
                    self._sizes[key] = (size, message)
                    self._mailbox.put(message)
                    return
        self._on_drop(verdict, message.kind)

    def take(self, sender: str, kind: str, step: int, index: int, timeout: float | None) -> Message:
        """The message (sender, kind, step, index) once delivered; PeerTimeout after `timeout` s."""
        message = self._mailbox.take(sender, kind, step, index, timeout)
        key = (sender, kind, step, index)
        with self._lock:
            entry = self._sizes.get(key)
            if entry is not None and entry[1] is message:
                del self._sizes[key]
                self._bytes -= entry[0]
        return message

    def close(self, reason: str) -> None:
        """Wake every waiting `take` with TransportClosed(reason)."""
        self._mailbox.close(reason)

    def held(self) -> int:
        """Messages of a newer plan version waiting for `set_version`."""
        with self._lock:
            return len(self._held)

    def unclaimed_bytes(self) -> int:
        """Payload bytes delivered to the mailbox and not yet taken."""
        with self._lock:
            return self._bytes
