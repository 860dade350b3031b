"""`Transport` over zmq: the live swarm's data plane.

One ROUTER socket bound to tcp://HOST:PORT receives everything; one DEALER per neighbour sends. All socket
I/O runs on an asyncio (uvloop) event loop in a background thread, because zmq sockets are not thread-safe and
the engine must never block on the network: `send` hands the frames to the loop thread and returns, `recv` waits
on a `Mailbox` the loop fills. Payloads travel as their own zmq frame without copies (see `peers.wire`).

    transport = ZmqTransport("p1", host="0.0.0.0", port=7000, advertise_host="10.0.0.5")
    transport.connect("p2", "tcp://10.0.0.6:7000")       # as the plan changes
    transport.set_plan_version(3)                        # older versions purged, newer held
    transport.send("p2", Message("act", step=17, index=0, payload=frame))
    reply = transport.recv("p2", "grad", step=17, index=0, timeout=30.0)
    transport.serve_state(stage=1, blob=state_bytes)     # for newcomers' `fetch_state`
    transport.stats()                                    # counters per message kind
    transport.close()

Robustness: every socket has a maximum frame size (zmq.MAXMSGSIZE, and the parser checks again); malformed
frames are counted and dropped; messages of an older plan version are dropped and counted, newer ones are held
until this peer adopts that version, and data delivered but not yet claimed is capped at `max_unclaimed_bytes`
(`peers.zmq_mailbox`); a send to a peer that accepts nothing blocks at most `send_timeout` seconds once
`max_pending` messages queue up (plus as many in zmq's own pipe: that bounds memory per neighbour), then raises
PeerTimeout; `close` wakes every waiter with TransportClosed. The same port answers probes (`peers.probe`) and
state requests (`peers.state_transfer`), so a peer publishes one address.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import uvloop
import zmq
import zmq.asyncio

from peers import wire
from peers.delay_line import DelayLine, hold
from peers.probe import parse_reach_request, probe_async
from peers.state_transfer import DEFAULT_CHUNK_BYTES, StateServer
from peers.transport import Message, PeerTimeout, TransportClosed
from peers.zmq_client import advertised_host, bind_host, check_address
from peers.zmq_mailbox import GatedMailbox
from peers.zmq_stats import TransportStats

__all__ = ["ZmqTransport"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_MAX_CONCURRENT_REACH = 4
# A full zmq pipe is retried after this backoff: pyzmq's asyncio wait for writability (zmq's edge-triggered FD)
# measured 20-40x slower than polling at the high-water mark; the pipe holds `max_pending` messages meanwhile.
_BACKOFF_S = (0.0002, 0.005)


@dataclass
class _Link:
    """One neighbour: a plain (non-asyncio) DEALER used only on the loop thread, and its writer."""

    address: str
    sock: zmq.Socket[bytes]
    queue: asyncio.Queue[tuple[list[Any], str, int, float]]  # frames, kind, payload bytes, due time (0: now)
    writer: asyncio.Task[None] = field(init=False)  # started once the link exists
    pending: int = 0  # messages handed to `send` that zmq has not accepted yet


class ZmqTransport:
    """A peer's data plane endpoint; thread-safe, one per process is the norm.

    name: this peer's name, stamped as `sender` on everything it sends.
    host, port: where the ROUTER binds (port 0 picks a free port; see `address`).
    advertise_host: the host others should dial when `host` is a wildcard like 0.0.0.0.
    max_message_bytes: the largest payload accepted (and sent); bigger frames are refused by zmq.
    max_pending: messages queued per neighbour before `send` blocks.
    send_timeout: how long a blocked `send` waits before raising PeerTimeout; derive it from the
        link speed (the timeout hierarchy), e.g. 3 x the time the largest message needs.
    max_unclaimed_bytes: received payloads not yet taken by `recv` (default 4 x max_message_bytes);
        more is dropped and counted, so a flood cannot exhaust memory.
    link_latency: a `peers.delay_line.DelayLine` holding each link's sends for its latency (None: off).
    """

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0, *, advertise_host: str | None = None,
                 max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES, max_pending: int = 64,
                 send_timeout: float = 30.0, plan_version: int = 0, max_unclaimed_bytes: int | None = None,
                 link_latency: DelayLine | None = None) -> None:
        if not name or len(name) > 256:
            raise ValueError(f"transport name must be 1..256 characters, got {name!r}")
        if not 0 <= port < 65536:
            raise ValueError(f"--port must be in 0..65535, got {port}")
        if min(max_message_bytes, max_pending, send_timeout, max_unclaimed_bytes or 1) <= 0:
            raise ValueError("max_message_bytes, max_pending, send_timeout and max_unclaimed_bytes must be positive")
        self.name = name
        self.max_message_bytes = max_message_bytes
        self.max_pending = max_pending
        self.send_timeout = send_timeout
        self._delays = link_latency or None
        self._stats = TransportStats()
        self._mailbox = GatedMailbox(plan_version, max_unclaimed_bytes or 4 * max_message_bytes, self._stats.add)
        self._states = StateServer(min(max_message_bytes, DEFAULT_CHUNK_BYTES))
        self._cond = threading.Condition()  # guards _links, their pending counts and _closed
        self._links: dict[str, _Link] = {}
        self._closed = False
        self._reach_tasks: set[asyncio.Task[None]] = set()
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"zmq-{name}", daemon=True)
        self._thread.start()
        try:
            port = self._call(self._open(host, port))
        except BaseException:
            self._stop_loop()
            raise
        self.port = port
        self.address = f"tcp://{advertised_host(host, advertise_host)}:{port}"

    # ---- the Transport protocol -------------------------------------------------------------

    def send(self, to: str, message: Message) -> None:
        """Queue `message` for peer `to` and return; the payload is not copied (do not mutate it).

        The message travels with its own `plan_version`, or this transport's when it is 0. Raises
        ValueError for an unknown peer or an oversized payload, PeerTimeout when `to` has accepted
        nothing for `send_timeout` seconds, TransportClosed after `close`.
        """
        self._check_open()
        version = message.plan_version or self.plan_version
        if to == self.name:
            self._mailbox.deliver(replace(message, sender=self.name, plan_version=version))
            return
        frames = wire.pack(message, sender=self.name, plan_version=version)
        payload_bytes = memoryview(frames[1]).nbytes
        if payload_bytes > self.max_message_bytes:
            raise ValueError(f"payload of {payload_bytes} bytes exceeds max_message_bytes={self.max_message_bytes}")
        link = self._reserve(to)
        due = self._delays.due(link.address) if self._delays else 0.0
        try:
            self._loop.call_soon_threadsafe(link.queue.put_nowait, (frames, message.kind, payload_bytes, due))
        except RuntimeError:  # the loop stopped between the reservation and now: we were closed
            self._release(link)
            raise TransportClosed(f"transport {self.name!r} is closed") from None

    def recv(self, sender: str, kind: str, step: int, index: int, timeout: float | None = None) -> Message:
        """Wait for the message (sender, kind, step, index); PeerTimeout after `timeout` seconds."""
        return self._mailbox.take(sender, kind, step, index, timeout)

    def connect(self, name: str, address: str) -> None:
        """Route messages for peer `name` to `address` (tcp://HOST:PORT); re-pointing is allowed."""
        check_address(address)
        with self._cond:
            self._check_open()
            link = self._links.get(name)
            if link is not None and link.address == address:
                return
        self._call(self._open_link(name, address))

    def disconnect(self, name: str) -> None:
        """Forget peer `name`: its queued messages are dropped, sends to it raise ValueError."""
        if self._closed:  # close() already dropped every link, and the loop is gone
            return
        self._call(self._close_link(name))

    def peers(self) -> dict[str, str]:
        """The connected neighbours: name -> address."""
        with self._cond:
            return {name: link.address for name, link in self._links.items()}

    @property
    def plan_version(self) -> int:
        """The plan version data messages must carry to be delivered (and the default on sends)."""
        return self._mailbox.version

    def set_plan_version(self, version: int) -> None:
        """Adopt plan `version`: the one call a peer makes when it switches plans.

        Unclaimed messages of older versions are purged (counted as "dropped_stale"), so a step
        rerun under the new plan never takes a leftover of the old one; messages of `version`
        held back so far are delivered. Plans only move forward: an older version is an error.
        """
        if type(version) is not int or version < 0:
            raise ValueError(f"plan_version must be an int >= 0, got {version!r}")
        if version < self.plan_version:
            raise ValueError(f"plan version {version} is older than the adopted {self.plan_version}")
        self._mailbox.set_version(version)

    def serve_state(self, stage: int, blob: bytes | None) -> None:
        """Serve `blob` (this peer's state of `stage`) to `fetch_state` callers; None stops serving."""
        self._states.publish(stage, blob)

    def stats(self) -> dict[str, Any]:
        """Counters: per-kind received/sent/bytes/drops, malformed frames, held and unclaimed data."""
        return {**self._stats.snapshot(), "held_future": self._mailbox.held(),
                "unclaimed_bytes": self._mailbox.unclaimed_bytes()}

    def close(self) -> None:
        """Wake all waiters (TransportClosed), close sockets with linger 0, stop the loop thread."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._mailbox.close(f"transport {self.name!r} closed")
        try:
            self._call(self._shutdown())
        finally:
            self._stop_loop()

    def __enter__(self) -> ZmqTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- engine-thread helpers --------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"transport {self.name!r} is closed")

    def _reserve(self, to: str) -> _Link:
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
                                      f"({link.pending} messages queued)")
                self._cond.wait(remaining)

    def _release(self, link: _Link) -> None:
        with self._cond:
            link.pending -= 1
            self._cond.notify_all()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10.0)
        if not self._thread.is_alive():
            self._loop.close()

    # ---- loop-thread side -------------------------------------------------------------------

    async def _open(self, host: str, port: int) -> int:
        self._context = zmq.asyncio.Context()
        self._plain_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(self._context.underlying)
        self._router = self._new_socket(zmq.ROUTER)
        endpoint = f"tcp://{bind_host(host)}:{port or '*'}"
        try:
            self._router.bind(endpoint)
        except zmq.ZMQError as error:
            self._context.destroy(linger=0)
            raise OSError(f"cannot bind the data port {endpoint}: {error}. Pass a free --port, or a --host "
                          f"that is an address of this machine") from None
        self._reader = asyncio.ensure_future(self._read())
        return int(self._router.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])

    def _new_socket(self, kind: int, context: zmq.Context[Any] | None = None) -> Any:
        sock = (context or self._context).socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IPV6, 1)  # accept [::1]-style hosts too; IPv4 keeps working
        sock.setsockopt(zmq.MAXMSGSIZE, max(self.max_message_bytes, wire.MAX_HEADER_BYTES))
        sock.setsockopt(zmq.SNDHWM, self.max_pending)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
        return sock

    async def _open_link(self, name: str, address: str) -> None:
        await self._close_link(name)
        sock = self._new_socket(zmq.DEALER, self._plain_context)
        sock.connect(address)
        link = _Link(address, sock, asyncio.Queue())
        link.writer = asyncio.ensure_future(self._drain(link))
        with self._cond:
            self._links[name] = link

    async def _close_link(self, name: str) -> None:
        with self._cond:
            link = self._links.pop(name, None)
            self._cond.notify_all()
        if link is not None:
            link.writer.cancel()
            link.sock.close(linger=0)

    async def _drain(self, link: _Link) -> None:
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
            self._release(link)

    async def _read(self) -> None:
        while True:
            try:
                frames = await self._router.recv_multipart(copy=False)
            except (asyncio.CancelledError, zmq.ContextTerminated):
                return
            except zmq.ZMQError as error:
                if self._router.closed:  # shutting down: no busy loop on a dead socket
                    return
                log.warning("data port receive failed: %s", error)
                continue
            try:
                self._handle(frames[0], frames[1:])
            except Exception:  # a bug here must not take the data port down with it
                log.exception("failed to handle an incoming message")

    def _handle(self, identity: zmq.Frame, frames: list[zmq.Frame]) -> None:
        try:
            message = wire.unpack(frames, max_message_bytes=self.max_message_bytes)
        except wire.WireError as error:
            self._stats.reject(str(error))
            return
        self._stats.count_received(message.kind, sum(len(frame) for frame in frames))
        if message.kind == wire.PING and self._delays:  # held for the emulated round trip to the pinging host
            delay = self._delays.pong(identity)
            self._loop.call_later(delay, self._reply, identity, wire.PONG, message.step, message.index, b"")
        elif message.kind == wire.PING:
            self._reply(identity, wire.PONG, message.step, message.index, b"")
        elif message.kind == wire.STATE_REQUEST:
            self._reply(identity, *self._states.answer(message))
        elif message.kind == wire.REACH_REQUEST:
            self._start_reach(identity, message)
        elif message.kind in wire.CONTROL_KINDS:
            self._stats.reject(f"unexpected control message {message.kind!r} on the data port")
        else:
            self._mailbox.deliver(message)

    def _reply(self, identity: zmq.Frame, kind: str, step: int, index: int, payload: bytes | memoryview) -> None:
        frames = wire.pack(Message(kind, step, index, payload), sender=self.name, plan_version=self.plan_version)
        header_bytes, payload_bytes = len(frames[0]), memoryview(frames[1]).nbytes
        future = self._router.send_multipart([identity, *frames], copy=False)

        def count(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._stats.count_sent(kind, header_bytes, payload_bytes)

        if future.done():  # the usual case: counted before the requester can see the reply
            count(future)
        else:
            future.add_done_callback(count)

    def _start_reach(self, identity: zmq.Frame, request: Message) -> None:
        try:
            address, timeout = parse_reach_request(request.payload)
        except ValueError as error:
            self._stats.reject(f"bad reachability request: {error}")
            return
        if len(self._reach_tasks) >= _MAX_CONCURRENT_REACH:
            busy = wire.ReachResultBody(busy=True)
            self._reply(identity, wire.REACH_RESULT, 0, request.index, wire.pack_body(busy))
            return

        async def reach() -> None:
            rtt = await probe_async(self._context, address, timeout)
            self._reply(identity, wire.REACH_RESULT, 0, request.index, wire.pack_body(wire.ReachResultBody(rtt=rtt)))

        task = asyncio.ensure_future(reach())
        self._reach_tasks.add(task)
        task.add_done_callback(self._reach_tasks.discard)

    async def _shutdown(self) -> None:
        for task in [self._reader, *self._reach_tasks]:
            task.cancel()
        with self._cond:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.writer.cancel()
            link.sock.close(linger=0)
        self._router.close(linger=0)
        self._context.destroy(linger=0)

