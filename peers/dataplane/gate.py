"""The receive side's gate: only messages of the current plan, within memory budgets, get in.

A peer's data port is open to anyone, and neighbours may switch plans a moment before or after
this peer does. So every arriving data message passes one check before the engine can see it:
  - an older plan version: dropped and counted ("dropped_stale"), that plan is over;
  - the next plan version (current + 1 only): held until this peer adopts it, so a fast
    neighbour's first messages of a new plan are not lost; any later version, or past the held
    budget, is dropped ("dropped_future"), so forged far-future versions cannot fill it for good;
  - a key (sender, kind, step, index) this gate already holds: refused as "duplicate", the
    first message wins, so a late forgery or a replay never replaces what the engine consumes;
  - past its sender's share of in-flight messages (delivered and unclaimed, plus held):
    `max_messages_per_sender` or `max_bytes_per_sender`, refused as "flood" naming the sender, so
    one flooding sender cannot crowd out this peer's other neighbours;
  - the current version: into the `Mailbox`, unless the bytes delivered but not yet claimed would
    pass `max_bytes`, or the unclaimed messages `max_messages` ("dropped_overflow"; the count
    caps a flood of empty payloads under distinct keys or made-up sender names).
A flood or a runaway sender cannot exhaust memory; at worst the engine times out and aborts the step.
Drops ("dropped_*") count per message kind, refusals ("duplicate", "flood", categories of
`peers.dataplane.transport.REJECTIONS`) with a detail naming the sender: both through `on_drop`.
"""
from __future__ import annotations

from typing import Protocol

from peers.dataplane.transport import Mailbox, Message

__all__ = ["GatedMailbox", "OnDrop", "DEFAULT_MAX_MESSAGES", "DEFAULT_MAX_MESSAGES_PER_SENDER"]

_MAX_HELD_MESSAGES = 1024
# Unclaimed messages of the current plan: a step needs one per micro-batch and all-reduce peer,
# far fewer than this; each costs ~1 KB of bookkeeping even with an empty payload.
DEFAULT_MAX_MESSAGES = 16384
# One sender's in-flight messages: a step needs at most micro_batches activations (or gradients)
# plus 2 all-reduce chunks from any one neighbour.
DEFAULT_MAX_MESSAGES_PER_SENDER = 256

_Key = tuple[str, str, int, int]


class OnDrop(Protocol):
    """Counts what the gate refused: `counter` is "dropped_stale" / "dropped_future" /
    "dropped_overflow" (per message kind), or a REJECTIONS category with a `detail` naming the sender."""

    def __call__(self, counter: str, kind: str, detail: str = "", /) -> None: ...


class GatedMailbox(Mailbox):
    """A `Mailbox` behind the plan-version check, duplicate refusal and budgets; `on_drop` counts.

    max_bytes / max_messages: unclaimed payload bytes and messages of the current plan, all senders.
    max_messages_per_sender / max_bytes_per_sender (default max_bytes // 2): one sender's messages
    in flight (unclaimed plus held); sized so a normal step never reaches them. The messages of the
    current plan live only in the mailbox's own store; the gate keeps just their totals.
    """

    def __init__(self, version: int, max_bytes: int, on_drop: OnDrop, *, max_messages: int = DEFAULT_MAX_MESSAGES,
                 max_messages_per_sender: int = DEFAULT_MAX_MESSAGES_PER_SENDER,
                 max_bytes_per_sender: int | None = None) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.max_messages_per_sender = max_messages_per_sender
        self.max_bytes_per_sender = max_bytes // 2 if max_bytes_per_sender is None else max_bytes_per_sender
        self._version = version
        self._on_drop = on_drop
        self._held: dict[_Key, Message] = {}  # of version current + 1, until set_version
        self._held_bytes = 0
        self._bytes = 0  # payload bytes in the store
        self._load: dict[str, tuple[int, int]] = {}  # sender -> (messages, bytes) unclaimed or held

    @property
    def version(self) -> int:
        """The plan version messages must carry to reach the mailbox."""
        return self._version

    def set_version(self, version: int) -> None:
        """Adopt `version`: held messages of it are delivered, older ones dropped as stale.

        Unclaimed messages of an older version leave the mailbox too (counted as stale), so a
        rerun of the same step under the new plan never takes a leftover of the old one.
        """
        refused: list[tuple[str, str, Message]] = []
        with self._cond:
            self._version = version
            held, self._held, self._held_bytes = self._held, {}, 0
            for message in held.values():
                self._release(message.sender, _size(message))
            for key in [key for key, message in self._messages.items() if message.plan_version < version]:
                message = self._messages.pop(key)
                self._removed(message)
                refused.append(("dropped_stale", "", message))
            for message in held.values():  # under the lock: a newer same-key arrival cannot jump ahead
                verdict = self._admit(message)
                if verdict is not None:
                    refused.append((*verdict, message))
        for counter, detail, message in refused:
            self._on_drop(counter, message.kind, detail)

    def deliver(self, message: Message) -> None:
        """Gate one arrived message: into the mailbox, held for the next plan, or refused and counted."""
        with self._cond:
            verdict = self._admit(message)
        if verdict is not None:
            self._on_drop(verdict[0], message.kind, verdict[1])

    def held(self) -> int:
        """Messages of a newer plan version waiting for `set_version`."""
        with self._cond:
            return len(self._held)

    def unclaimed_bytes(self) -> int:
        """Payload bytes delivered to the mailbox and not yet taken."""
        with self._cond:
            return self._bytes

    def _removed(self, message: Message) -> None:
        """Taken or purged: its bytes and its sender's share are free again."""
        self._bytes -= _size(message)
        self._release(message.sender, _size(message))

    def _admit(self, message: Message) -> tuple[str, str] | None:
        """Deliver or hold `message`, or say why not: (counter, detail). Call with the lock held."""
        version, sender = message.plan_version, message.sender
        if version < self._version:
            return "dropped_stale", ""
        if version > self._version + 1:
            return "dropped_future", ""
        key = (sender, message.kind, message.step, message.index)
        future = version > self._version
        what = f"{message.kind!r} message for step {message.step}, index {message.index} (plan {version})"
        if key in (self._held if future else self._messages):
            return "duplicate", f"{sender!r} sent a second {what}; the first one is kept"
        size = _size(message)
        count, nbytes = self._load.get(sender, (0, 0))
        if count >= self.max_messages_per_sender or nbytes + size > self.max_bytes_per_sender:
            return "flood", (f"{sender!r} has {count} messages of {nbytes} bytes in flight (caps "
                             f"{self.max_messages_per_sender} / {self.max_bytes_per_sender} bytes); its {what} "
                             f"of {size} bytes was dropped")
        if future:
            if len(self._held) >= _MAX_HELD_MESSAGES or self._held_bytes + size > self.max_bytes:
                return "dropped_future", ""
            self._held[key] = message
            self._held_bytes += size
        else:
            if self._bytes + size > self.max_bytes or len(self._messages) >= self.max_messages:
                return "dropped_overflow", ""
            self._bytes += size
            self.put(message)
        self._load[sender] = (count + 1, nbytes + size)
        return None

    def _release(self, sender: str, size: int) -> None:
        """One of `sender`'s in-flight messages left (taken, purged or moved). Call with the lock held."""
        count, nbytes = self._load.pop(sender, (1, size))
        if count > 1:
            self._load[sender] = (count - 1, nbytes - size)


def _size(message: Message) -> int:
    return memoryview(message.payload).nbytes
