"""Messages between peers and the keyed mailbox every transport delivers into.

The stage executor and the all-reduce talk to their neighbours only through `Transport`:
`send(to, message)` and `recv(sender, kind, step, index)`. A receiver names exactly the message it
waits for, so arrival order never matters and one algorithm runs unchanged over the in-process
hub (deterministic tests, `swarm-sim local`) and over zmq sockets (the live swarm).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Protocol

__all__ = ["Message", "Transport", "Mailbox", "PeerTimeout", "TransportClosed", "BadMessage", "REJECTIONS",
           "InProcessHub"]


@dataclass(frozen=True)
class Message:
    """One unit on the data plane: a small header plus one compression frame.

    kind: "act" (forward activations), "grad" (activation gradients), or an all-reduce phase.
    index: the micro-batch for pipeline messages, the chunk or round for all-reduce messages.
    held_us: set by a zmq transport on a response (`grad`, `ar-gather`): how long its sender held the
    request it answers, which lets the requester time the link (`peers.dataplane.meter`).
    """

    kind: str
    step: int
    index: int
    payload: bytes | memoryview
    sender: str = ""
    plan_version: int = 0
    sample_ids: tuple[int, ...] = ()
    held_us: int | None = None


class PeerTimeout(TimeoutError):
    """A neighbour did not deliver in time: the step must be aborted, not waited on forever.

    peer: the neighbour that stayed silent, when one is known: the coordinator blames it.
    """

    def __init__(self, message: str, peer: str = "") -> None:
        super().__init__(message)
        self.peer = peer


class TransportClosed(RuntimeError):
    """The transport was closed (shutdown or step abort) while someone waited on it."""


# Why a message was refused: the keys of `rejected` in `ZmqTransport.stats()` and in a peer's record.
REJECTIONS = ("malformed", "nonfinite", "unauthenticated", "duplicate", "flood")


class BadMessage(ValueError):
    """A neighbour's message arrived but cannot be used (forged, corrupted, NaN/inf, ...).

    The step it belongs to fails like a timeout does (aborted, then rerun under the protocol);
    the process goes on. `reason` is one of REJECTIONS, `sender` the neighbour to blame.
    """

    def __init__(self, sender: str, reason: str, detail: str) -> None:
        if reason not in REJECTIONS:
            raise ValueError(f"unknown rejection reason {reason!r}; expected one of {REJECTIONS}")
        super().__init__(f"{reason} message from {sender!r}: {detail}")
        self.sender = sender
        self.reason = reason
        self.detail = detail


class Transport(Protocol):
    """What the stage executor and the all-reduce need from the network."""

    name: str

    def send(self, to: str, message: Message) -> None: ...

    def recv(self, sender: str, kind: str, step: int, index: int, timeout: float | None = None) -> Message: ...


_Key = tuple[str, str, int, int]


class Mailbox:
    """Arrived messages keyed by (sender, kind, step, index), with blocking, timed takes.

    The first message under a key wins: a second one with a key already held is refused (`put`
    returns False), so a late forgery or a replay cannot replace what the receiver will consume.
    A subclass that keeps books on what it holds (`GatedMailbox`) shares the one store and lock,
    and hears of each message leaving it through `_removed`.
    """

    def __init__(self) -> None:
        self._messages: dict[_Key, Message] = {}
        self._cond = threading.Condition()  # reentrant: a subclass may put while it holds it
        self._closed: str | None = None

    def put(self, message: Message) -> bool:
        """Store `message` for its `take`; False (and nothing stored) when its key is already held."""
        key = (message.sender, message.kind, message.step, message.index)
        with self._cond:
            if key in self._messages:
                return False
            self._messages[key] = message
            self._cond.notify_all()
            return True

    def take(self, sender: str, kind: str, step: int, index: int, timeout: float | None = None) -> Message:
        key = (sender, kind, step, index)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while key not in self._messages:
                if self._closed is not None:
                    raise TransportClosed(self._closed)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PeerTimeout(f"no {kind!r} message from {sender!r} for step {step}, index {index} "
                                      f"within {timeout:.1f} s", peer=sender)
                self._cond.wait(remaining)
            message = self._messages.pop(key)
            self._removed(message)
            return message

    def close(self, reason: str = "transport closed") -> None:
        """Wake every waiter with `TransportClosed`; later takes fail the same way."""
        with self._cond:
            self._closed = reason
            self._cond.notify_all()

    def _removed(self, message: Message) -> None:
        """`message` just left the store (called with the lock held)."""


class InProcessHub:
    """Endpoints that deliver straight into each other's mailboxes, for one-process grids."""

    def __init__(self) -> None:
        self._mailboxes: dict[str, Mailbox] = {}

    def endpoint(self, name: str) -> "_InProcessTransport":
        if name in self._mailboxes:
            raise ValueError(f"endpoint {name!r} already exists on this hub")
        self._mailboxes[name] = Mailbox()
        return _InProcessTransport(name, self)

    def deliver(self, to: str, message: Message) -> None:
        try:
            mailbox = self._mailboxes[to]
        except KeyError:
            raise ValueError(f"no endpoint named {to!r} on this hub") from None
        mailbox.put(message)  # a second message under a held key is refused: the first one wins

    def mailbox(self, name: str) -> Mailbox:
        return self._mailboxes[name]

    def close(self, reason: str = "hub closed") -> None:
        for mailbox in self._mailboxes.values():
            mailbox.close(reason)


class _InProcessTransport:
    def __init__(self, name: str, hub: InProcessHub) -> None:
        self.name = name
        self._hub = hub

    def send(self, to: str, message: Message) -> None:
        # bytes() detaches the payload from any buffer the sender reuses (no copy for bytes).
        self._hub.deliver(to, replace(message, sender=self.name, payload=bytes(message.payload)))

    def recv(self, sender: str, kind: str, step: int, index: int, timeout: float | None = None) -> Message:
        return self._hub.mailbox(self.name).take(sender, kind, step, index, timeout)
