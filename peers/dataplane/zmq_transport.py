"""`Transport` over zmq: the live swarm's data plane.

One ROUTER socket bound to tcp://HOST:PORT receives everything; one DEALER per neighbour sends. All socket
I/O runs on an asyncio (uvloop) event loop in a background thread, because zmq sockets are not thread-safe and
the engine must never block on the network: `send` hands the frames to the loop thread and returns, `recv` waits
on a `Mailbox` the loop fills. Payloads travel as their own zmq frame without copies (see `peers.dataplane.wire`).

    transport = ZmqTransport("p1", host="0.0.0.0", port=7000, advertise_host="10.0.0.5")
    transport.connect("p2", "tcp://10.0.0.6:7000")       # as the plan changes
    transport.set_plan_version(3)                        # older versions purged, newer held
    transport.send("p2", Message("act", step=17, index=0, payload=frame, plan_version=3))
    reply = transport.recv("p2", "grad", step=17, index=0, timeout=30.0)
    transport.serve_state(stage=1, blob=state_bytes)     # for newcomers' `fetch_state`
    transport.stats()                                    # counters per message kind
    transport.close()

Robustness: every socket has a maximum frame size (zmq.MAXMSGSIZE, and the parser checks again); malformed
frames are counted and dropped; messages of an older plan version are dropped and counted, those of the next
version are held until this peer adopts it (later ones are dropped), a second message with the same key is
refused, and data delivered but not yet claimed is capped at `max_unclaimed_bytes`, each sender's share too
(`peers.dataplane.gate`); a send to a peer that accepts nothing blocks at most `send_timeout` seconds once
`max_pending` messages queue up (plus as many in zmq's own pipe: that bounds memory per neighbour), then raises
PeerTimeout; `close` wakes every waiter with TransportClosed. The same port answers probes (`peers.dataplane.probe`) and
state requests (`peers.state_transfer`), so a peer publishes one address.

`meter` (`peers.dataplane.meter`) times each link from its training traffic: a response leaving here carries
how long this peer held the request it answers, and a response arriving completes a timed round trip.

Authentication (`peers.security`): given `keys`, the ROUTER is a CURVE server whose ZAP handler accepts
only the keys `admission` holds, and every DEALER a CURVE client of the neighbour's key. The sender of
a received message is then the admitted name of the key its connection authenticated with: a data
message whose header names anyone else, or whose key was revoked since, is dropped and counted as
rejected "unauthenticated", like every refused handshake. Without `keys` the port is open to anyone.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import uvloop
import zmq
import zmq.asyncio

from peers.dataplane import wire
from peers.dataplane.client import advertised_host, bind_host, check_address
from peers.dataplane.delay_line import DelayLine
from peers.dataplane.gate import GatedMailbox
from peers.dataplane.meter import LinkMeter
from peers.dataplane.outbound import Links
from peers.dataplane.probe import ReachChecks
from peers.dataplane.routes import ReportRoutes
from peers.dataplane.stats import TransportStats
from peers.dataplane.transport import Message, TransportClosed
from peers.security import Admission, CurveKeys, ZapHandler, check_curve_key, curve_client, curve_server
from peers.state_transfer import DEFAULT_CHUNK_BYTES, StateServer

__all__ = ["ZmqTransport"]

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    link_latency: a `peers.dataplane.delay_line.DelayLine` holding each link's sends for its latency (None: off).
    keys: this endpoint's curve key pair: turns CurveZMQ on (see the module docstring). None: open port.
    admission: the keys (name -> key) allowed to connect; consulted live, so `admission.admit(...)`
        lets a peer in at its next handshake. Defaults to an empty one (nobody until admitted).
    """

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0, *, advertise_host: str | None = None,
                 max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES, max_pending: int = 64,
                 send_timeout: float = 30.0, plan_version: int = 0, max_unclaimed_bytes: int | None = None,
                 link_latency: DelayLine | None = None, keys: CurveKeys | None = None,
                 admission: Admission | None = None) -> None:
        if not name or len(name) > 256:
            raise ValueError(f"transport name must be 1..256 characters, got {name!r}")
        if not 0 <= port < 65536:
            raise ValueError(f"--port must be in 0..65535, got {port}")
        if min(max_message_bytes, max_pending, send_timeout, max_unclaimed_bytes or 1) <= 0:
            raise ValueError("max_message_bytes, max_pending, send_timeout and max_unclaimed_bytes must be positive")
        if admission is not None and keys is None:
            raise ValueError("an admission list needs curve keys: pass keys=CurveKeys (or neither, for an open port)")
        self.name = name
        self.max_message_bytes = max_message_bytes
        self.max_pending = max_pending
        self.send_timeout = send_timeout
        self.keys = keys
        self.admission = admission if admission is not None else Admission()
        self._delays = link_latency or None
        self._stats = TransportStats()
        self._mailbox = GatedMailbox(plan_version, max_unclaimed_bytes or 4 * max_message_bytes, self._stats.add)
        self._states = StateServer(min(max_message_bytes, DEFAULT_CHUNK_BYTES))
        self.meter = LinkMeter(time.monotonic)  # links timed from the training traffic (`peers.dataplane.meter`)
        self._links = Links(name, self._link_socket, self._stats, max_pending=max_pending, send_timeout=send_timeout)
        self._lock = threading.Lock()  # guards _closed
        self._closed = False
        self._zap: ZapHandler | None = None
        self.reports = ReportRoutes()  # step reports, on a coordinator's port (`peers.step_channel`)
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

        The message travels with the plan version it carries (a runner's `PlanLink` stamps it). Raises
        ValueError for an unknown peer or an oversized payload, PeerTimeout when `to` has accepted
        nothing for `send_timeout` seconds, TransportClosed after `close`.
        """
        self._check_open()
        if to == self.name:
            self._mailbox.deliver(replace(message, sender=self.name))
            return
        if (held_us := self.meter.held_us(to, message.kind, message.step, message.index)) is not None:
            message = replace(message, held_us=held_us)
        frames = wire.pack(message, sender=self.name, plan_version=message.plan_version)
        payload_bytes = memoryview(frames[1]).nbytes
        if payload_bytes > self.max_message_bytes:
            raise ValueError(f"payload of {payload_bytes} bytes exceeds max_message_bytes={self.max_message_bytes}")
        link = self._links.reserve(to)
        due = self._delays.due(link.address) if self._delays else 0.0
        self.meter.sent(to, message.kind, message.step, message.index, len(frames[0]) + payload_bytes)
        try:
            self._loop.call_soon_threadsafe(link.queue.put_nowait, (frames, message.kind, payload_bytes, due))
        except RuntimeError:  # the loop stopped between the reservation and now: we were closed
            self._links.release(link)
            raise TransportClosed(f"transport {self.name!r} is closed") from None

    def recv(self, sender: str, kind: str, step: int, index: int, timeout: float | None = None) -> Message:
        """Wait for the message (sender, kind, step, index); PeerTimeout after `timeout` seconds."""
        return self._mailbox.take(sender, kind, step, index, timeout)

    def connect(self, name: str, address: str, server_key: str | None = None, *,
                on_push: Callable[[Message], None] | None = None) -> None:
        """Route messages for peer `name` to `address` (tcp://HOST:PORT); re-pointing is allowed.

        With curve keys on, the link is a CURVE client of `server_key`, by default the key `admission`
        holds for `name` (ValueError if there is none); an open transport ignores `server_key`.
        on_push: make the link two-way: what `name` pushes back on it (`push`) goes to
        `on_push(message)` on the loop thread, its sender set to `name` (this side dialed the address).
        """
        check_address(address)
        self._check_open()
        if self.keys is None:
            server_key = None
        else:
            server_key = server_key or self.admission.key_of(name)
            if server_key is None:
                raise ValueError(f"no curve key for peer {name!r}: admit it first, or pass connect(..., server_key=)")
            check_curve_key(server_key, f"curve key of peer {name!r}")
        link = self._links.get(name)
        if link is not None and (link.address, link.server_key) == (address, server_key):
            return
        on_frames = None if on_push is None else partial(self._pushed, name, on_push)
        self._call(self._links.open(name, address, server_key, on_frames))

    def push(self, name: str, kind: str, payload: bytes) -> bool:
        """Send a control message to `name` on the connection its last step report came in on
        (`reports`); False when it has not reported yet. Thread-safe, never blocks."""
        identity = self.reports.route(name)
        if identity is None or self._closed:
            return False
        self._loop.call_soon_threadsafe(self._reply, identity, kind, 0, 0, payload)
        return True

    def disconnect(self, name: str) -> None:
        """Forget peer `name`: its queued messages are dropped, sends to it raise ValueError."""
        if self._closed:  # close() already dropped every link, and the loop is gone
            return
        self._call(self._links.close(name))

    def peers(self) -> dict[str, str]:
        """The connected neighbours: name -> address."""
        return self._links.peers()

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
        """Counters: per-kind received/sent/bytes/drops, rejections, held and unclaimed data."""
        return {**self._stats.snapshot(), "held_future": self._mailbox.held(),
                "unclaimed_bytes": self._mailbox.unclaimed_bytes()}

    def count_rejection(self, reason: str, detail: str) -> None:
        """Count a message the engine refused (a `BadMessage`'s reason and text) in `stats()["rejected"]`."""
        self._stats.reject(detail, reason)

    def close(self) -> None:
        """Wake all waiters (TransportClosed), close sockets with linger 0, stop the loop thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._links.mark_closed()
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
        if self.keys is not None:  # ZAP first: a handshake before the handler is bound would pass unchecked
            self._zap = ZapHandler(self._context, self.admission, self._refused)
            self._zap.start()
            curve_server(self._router, self.keys)
            self._zap.watch(self._router)
        endpoint = f"tcp://{bind_host(host)}:{port or '*'}"
        try:
            self._router.bind(endpoint)
        except zmq.ZMQError as error:
            if self._zap is not None:
                await self._zap.stop()
            self._context.destroy(linger=0)
            raise OSError(f"cannot bind the data port {endpoint}: {error}. Pass a free --port, or a --host "
                          f"that is an address of this machine") from None
        self._reader = asyncio.ensure_future(self._read())
        self._reach = ReachChecks(self._context, self.keys, self._reply, self._stats.reject)
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

    def _link_socket(self, address: str, server_key: str | None, two_way: bool) -> zmq.Socket[bytes]:
        """A neighbour's DEALER (on the loop thread), a CURVE client when keys are on: plain and
        send-only, or an asyncio one that the link also reads (two-way)."""
        sock: zmq.Socket[bytes] = self._new_socket(zmq.DEALER, None if two_way else self._plain_context)
        if self.keys is not None and server_key is not None:
            curve_client(sock, self.keys, server_key)
        return sock

    def _refused(self, detail: str) -> None:
        self._stats.reject(detail, "unauthenticated")

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
        authenticated = self._authenticated(identity) if self.keys is not None else None
        if self.keys is not None and authenticated is None:
            return
        try:
            message = wire.unpack(frames, max_message_bytes=self.max_message_bytes)
        except wire.WireError as error:
            self._stats.reject(str(error))
            return
        if authenticated is not None and message.sender != authenticated:
            if message.kind not in wire.CONTROL_KINDS:  # a data message under another name: forged
                self._refused(f"{message.kind!r} message claims sender {message.sender!r} but its connection "
                              f"authenticated as {authenticated!r}; dropped")
                return
            message = replace(message, sender=authenticated)  # probes and requests: the header's name is unused
        nbytes = sum(len(frame) for frame in frames)
        self._stats.count_received(message.kind, nbytes)
        if message.kind == wire.PING and self._delays:  # held for the emulated round trip to the pinging host
            delay = self._delays.pong(identity)
            self._loop.call_later(delay, self._reply, identity, wire.PONG, message.step, message.index, b"")
        elif message.kind == wire.PING:
            self._reply(identity, wire.PONG, message.step, message.index, b"")
        elif message.kind == wire.STATE_REQUEST:
            self._reply(identity, *self._states.answer(message))
        elif message.kind == wire.REACH_REQUEST:
            self._reach.start(identity, message)
        elif message.kind == wire.STEP_REPORT:
            self.reports.received(identity, message)
        elif message.kind in wire.CONTROL_KINDS:
            self._stats.reject(f"unexpected control message {message.kind!r} on the data port")
        else:
            self.meter.arrived(message.sender, message.kind, message.step, message.index, nbytes, message.held_us)
            self._mailbox.deliver(message)

    def _pushed(self, name: str, on_push: Callable[[Message], None], frames: list[zmq.Frame]) -> None:
        """A message `name` sent back on a two-way link: only step_control is expected there."""
        try:
            message = wire.unpack(frames, max_message_bytes=self.max_message_bytes)
        except wire.WireError as error:
            self._stats.reject(f"from {name!r}: {error}")
            return
        if message.kind != wire.STEP_CONTROL:
            self._stats.reject(f"unexpected {message.kind!r} message pushed by {name!r}")
            return
        self._stats.count_received(message.kind, sum(len(frame) for frame in frames))
        on_push(replace(message, sender=name))

    def _authenticated(self, identity: zmq.Frame) -> str | None:
        """The admitted name of the curve key a message's connection authenticated with, or None (counted)."""
        try:
            key = identity.get("User-Id")
        except zmq.ZMQError:  # no metadata: cannot happen on a CURVE socket, refuse it all the same
            key = None
        name = self.admission.name_of(key) if isinstance(key, str) else None
        if name is None:
            self._refused(f"message from curve key {key} which is not admitted (any more); dropped")
        return name

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

    async def _shutdown(self) -> None:
        self._reader.cancel()
        self._reach.cancel()
        await self._links.shutdown()
        if self._zap is not None:
            await self._zap.stop()
        self._router.close(linger=0)
        self._context.destroy(linger=0)

