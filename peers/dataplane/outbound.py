"""The send side of a `ZmqTransport`: one DEALER per neighbour, and the writer task that feeds it.

Engine threads reserve a send slot (`reserve`, blocking while `max_pending` messages queue for that
neighbour, PeerTimeout after `send_timeout`) and hand the frames to the loop thread; there each
link's writer passes them to zmq in order. The sockets are plain (non-asyncio) zmq sockets touched
only on the loop thread: pyzmq's asyncio wait for writability is far slower than polling at the
high-water mark, so a full pipe is retried after a short backoff instead.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from peers.dataplane.delay_line import hold
from peers.dataplane.stats import TransportStats
from peers.dataplane.transport import PeerTimeout, TransportClosed

__all__ = ["Link", "Links"]

log = logging.getLogger(__name__)

# A full zmq pipe is retried after this backoff: pyzmq's asyncio wait for writability (zmq's edge-triggered FD)
# measured 20-40x slower than polling at the high-water mark; the pipe holds `max_pending` messages meanwhile.
_BACKOFF_S = (0.0002, 0.005)


@dataclass
class Link:
    """One neighbour: its address (and curve key), a DEALER used only on the loop thread, and its writer."""

    address: str
    server_key: str | None
    sock: zmq.Socket[bytes]
    queue: asyncio.Queue[tuple[list[Any], str, int, float]]  # frames, kind, payload bytes, due time (0: now)
    writer: asyncio.Task[None] = field(init=False)  # started once the link exists
    pending: int = 0  # messages handed to `send` that zmq has not accepted yet
    reader: asyncio.Task[None] | None = None  # a two-way link's: what the neighbour pushes back


class Links:
    """The neighbours of one transport, by name; thread-safe.

    new_socket(address, server_key, two_way): an unconnected DEALER set up for that neighbour (options,
    curve); a two-way one is an asyncio socket. owner: the transport's name, for error messages.
    """

    def __init__(self, owner: str, new_socket: Callable[[str, str | None, bool], zmq.Socket[bytes]],
                 stats: TransportStats,
                 *, max_pending: int, send_timeout: float) -> None:
        self.owner = owner
        self.max_pending = max_pending
        self.send_timeout = send_timeout
        self._new_socket = new_socket
        self._stats = stats
        self._cond = threading.Condition()  # guards _links, their pending counts and _closed
        self._links: dict[str, Link] = {}
        self._closed = False

    def get(self, name: str) -> Link | None:
        """The link to `name`, or None."""
        with self._cond:
            return self._links.get(name)

    def peers(self) -> dict[str, str]:
        """name -> address of every link."""
        with self._cond:
            return {name: link.address for name, link in self._links.items()}

    def reserve(self, to: str) -> Link:
        """Claim a send slot on the link to `to`, waiting while `max_pending` messages are queued."""
        deadline = time.monotonic() + self.send_timeout
        with self._cond:
            while True:
                self._check_open()
                link = self._links.get(to)
                if link is None:
                    raise ValueError(f"no address for peer {to!r}: call connect({to!r}, address) first")
                if link.pending < self.max_pending:
                    link.pending += 1
                    return link
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerTimeout(f"peer {to!r} at {link.address} accepted no data for {self.send_timeout:.1f} s "
                                      f"({link.pending} messages queued)", peer=to)
                self._cond.wait(remaining)

    def release(self, link: Link) -> None:
        """Give back a slot `reserve` claimed (the message left, failed, or never got queued)."""
        with self._cond:
            link.pending -= 1
            self._cond.notify_all()

    def mark_closed(self) -> None:
        """From any thread: waiting and later reservations raise TransportClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---- loop-thread side -------------------------------------------------------------------

    async def open(self, name: str, address: str, server_key: str | None,
                   on_frames: Callable[[list[zmq.Frame]], None] | None = None) -> None:
        """(Re)point `name` at `address`: a new DEALER and writer; the old link's queue is dropped.
        on_frames: a two-way link, whose received messages go there (on the loop thread)."""
        await self.close(name)
        sock = self._new_socket(address, server_key, on_frames is not None)
        sock.connect(address)
        link = Link(address, server_key, sock, asyncio.Queue())
        link.writer = asyncio.ensure_future(self._drain(link) if on_frames is None else self._send_each(link))
        if on_frames is not None:
            link.reader = asyncio.ensure_future(self._receive(link, on_frames))
        with self._cond:
            self._links[name] = link

    async def close(self, name: str) -> None:
        """Drop the link to `name` (if any), its socket and its queued messages."""
        with self._cond:
            link = self._links.pop(name, None)
            self._cond.notify_all()
        if link is not None:
            _stop(link)

    async def shutdown(self) -> None:
        """Close every link (after `mark_closed`)."""
        with self._cond:
            links, self._links = list(self._links.values()), {}
        for link in links:
            _stop(link)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"transport {self.owner!r} is closed")

    async def _drain(self, link: Link) -> None:
        """Hand queued messages to zmq in order, waiting (with backoff) while its pipe is full."""
        while True:
            frames, kind, payload_bytes, due = await link.queue.get()
            if due:
                await hold(due)
            delay = _BACKOFF_S[0]
            while True:
                try:
                    link.sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
                except zmq.Again:
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, _BACKOFF_S[1])
                    continue
                except Exception as error:  # the writer must outlive any one bad message
                    log.warning("send to %s failed: %s", link.address, error)
                    self._stats.add("send_failed", kind)
                else:
                    self._stats.count_sent(kind, len(frames[0]), payload_bytes)
                break
            self.release(link)

    async def _send_each(self, link: Link) -> None:
        """A two-way link's writer: its few small control messages simply wait for the socket."""
        while True:
            frames, kind, payload_bytes, due = await link.queue.get()
            sock: Any = link.sock  # an asyncio socket (`new_socket(..., two_way=True)`)
            try:
                await sock.send_multipart(frames, copy=False)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("send to %s failed: %s", link.address, error)
                self._stats.add("send_failed", kind)
            else:
                self._stats.count_sent(kind, len(frames[0]), payload_bytes)
            self.release(link)

    async def _receive(self, link: Link, on_frames: Callable[[list[zmq.Frame]], None]) -> None:
        sock: Any = link.sock  # an asyncio socket, like `_send_each`'s
        while True:
            try:
                frames = await sock.recv_multipart(copy=False)
            except (asyncio.CancelledError, zmq.ContextTerminated):
                return
            except zmq.ZMQError as error:
                if link.sock.closed:
                    return
                log.warning("receive from %s failed: %s", link.address, error)
                continue
            try:
                on_frames(frames)
            except Exception:  # a bug here must not take the link down with it
                log.exception("failed to handle a message from %s", link.address)


def _stop(link: Link) -> None:
    link.writer.cancel()
    if link.reader is not None:
        link.reader.cancel()
    link.sock.close(linger=0)
