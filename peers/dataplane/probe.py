"""Link measurements and the reachability check, all through a peer's real data socket.

Every `ZmqTransport` answers a "ping" with a "pong" on its data port, so a probe measures exactly
the path training traffic takes (same port, same firewall, same zmq stack):

    rtt = probe("tcp://10.0.0.5:7000")                  # seconds, or None if nobody answers
    bps = measure_bandwidth("tcp://10.0.0.5:7000")      # bytes/s from us to that peer
    rtt = check_reachable(via="tcp://10.0.0.5:7000", address=my_transport.address)

`check_reachable` asks another peer to probe *us*: it is what `swarm-peer join` runs at start,
because a NAT or firewall only shows from the outside. When it returns None, print
`unreachable_hint(address)`.

In a swarm with curve keys (`peers.security`) every call takes this host's `keys` and the peer's
`server_key`; the peer answers only if it admits `keys.public`, so an unadmitted prober sees None:

    rtt = probe(address, keys=my_keys, server_key=their_key)
    rtt = check_reachable(via=coordinator, address=me, keys=my_keys, server_key=coordinator_key)
"""
from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from peers.dataplane import wire
from peers.dataplane.client import check_address, check_curve_pair, open_dealer, receive_reply, send_control
from peers.dataplane.transport import Message, PeerTimeout
from peers.security import CurveKeys, check_curve_key, curve_client

__all__ = ["probe", "measure_bandwidth", "check_reachable", "unreachable_hint", "probe_async", "ReachChecks",
           "parse_reach_request"]

# A peer asked to probe someone else caps the time it spends on it.
MAX_REACH_TIMEOUT_S = 10.0
# Pause before asking a busy peer again (its running checks take one loopback to 10 s round trip).
_BUSY_RETRY_S = 0.1


def probe(address: str, timeout: float = 2.0, *, rounds: int = 3, keys: CurveKeys | None = None,
          server_key: str | None = None) -> float | None:
    """Round-trip time in seconds of a ping through the data port at `address`, or None.

    The first ping also opens the connection, so it only proves the port answers; the result is
    the median of `rounds` further pings. None means no answer within `timeout` seconds in total.
    keys, server_key: for a curve peer (see the module docstring), both or neither.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    deadline = time.monotonic() + timeout
    with open_dealer(address, keys=keys, server_key=server_key) as sock:
        if _ping(sock, deadline, b"") is None:
            return None
        times = [_ping(sock, deadline, b"") for _ in range(rounds)]
    measured = [t for t in times if t is not None]
    return statistics.median(measured) if measured else None


def measure_bandwidth(address: str, nbytes: int = 4 * 1024 * 1024, timeout: float = 10.0, *,
                      keys: CurveKeys | None = None, server_key: str | None = None) -> float | None:
    """Bytes per second from this host to the peer at `address`, or None if it does not answer.

    Sends one `nbytes` ping (the pong is empty) and subtracts a small ping's round trip, so the
    result is the uplink towards that peer. Keep `nbytes` below the peer's max_message_bytes.
    keys, server_key: for a curve peer, both or neither.
    """
    if nbytes <= 0:
        raise ValueError(f"nbytes must be positive, got {nbytes}")
    deadline = time.monotonic() + timeout
    with open_dealer(address, keys=keys, server_key=server_key) as sock:
        if _ping(sock, deadline, b"") is None:
            return None
        base = _ping(sock, deadline, b"")
        loaded = _ping(sock, deadline, bytes(nbytes))
    if base is None or loaded is None:
        return None
    return nbytes / max(loaded - base, 1e-6)


def check_reachable(via: str, address: str, timeout: float = 5.0, *, keys: CurveKeys | None = None,
                    server_key: str | None = None, own_key: str | None = None) -> float | None:
    """Ask the peer at `via` to ping `address`; its round trip in seconds, or None if unreachable.

    Raises PeerTimeout when `via` itself does not answer, or stays too busy (it runs at most a few
    checks at once, and answers "busy" beyond that) to check within `timeout`: in both cases
    nothing is known about `address`, which is not the same as "unreachable".

    In a curve swarm: `keys` and `server_key` (the key of `via`) open the request, and `own_key`
    (default `keys.public`) is the key of the endpoint at `address`, which `via` dials back as a
    curve client with its own keys, so that endpoint must admit the key of `via`.
    """
    check_address(address, what="address to check")
    check_curve_pair(keys, server_key)
    if own_key is None and keys is not None:
        own_key = keys.public
    if own_key is not None:
        check_curve_key(own_key, "own_key")
    deadline = time.monotonic() + timeout + 1.0  # the remote probe may use all of `timeout`
    busy = False
    with open_dealer(via, keys=keys, server_key=server_key) as sock:
        while True:
            remote_timeout = min(timeout, MAX_REACH_TIMEOUT_S, deadline - 1.0 - time.monotonic())
            if remote_timeout <= 0:
                break
            nonce = random.getrandbits(31)
            body = wire.pack_body(wire.ReachRequestBody(address=address, timeout=remote_timeout, key=own_key))
            send_control(sock, wire.REACH_REQUEST, body, index=nonce)
            reply = _await_kind(sock, wire.REACH_RESULT, nonce, deadline)
            if reply is None:
                break
            try:
                result = wire.unpack_body(reply.payload, wire.ReachResultBody)
            except wire.WireError:
                result = wire.ReachResultBody(busy=True)  # unreadable: ask again, like a busy answer
            busy = result.busy
            if not busy:
                return result.rtt
            time.sleep(_BUSY_RETRY_S)
    state = "stayed busy" if busy else "did not answer"
    raise PeerTimeout(f"peer at {via} {state} a reachability request within {timeout:.1f} s")


def parse_reach_request(payload: bytes | memoryview) -> tuple[str, float, str | None]:
    """(address, timeout, curve key or None) of a reachability request, timeout capped; ValueError if malformed."""
    body = wire.unpack_body(payload, wire.ReachRequestBody)
    key = None if body.key is None else check_curve_key(body.key, "reach request key")
    return check_address(body.address), min(body.timeout, MAX_REACH_TIMEOUT_S), key


def unreachable_hint(address: str, via: str | None = None) -> str:
    """What to tell a volunteer whose data port others cannot reach."""
    port = address.rsplit(":", 1)[-1]
    host = address[len("tcp://"):].rsplit(":", 1)[0]
    source = f"from the peer at {via}" if via else "from other peers"
    return (f"Your data port {address} is not reachable {source}. Other peers must be able to open a TCP "
            f"connection to it: allow inbound TCP port {port} in your firewall, forward it on your "
            f"router if you are behind NAT, or pass --host with an address of this machine that "
            f"others can reach (the current one is {host}) and --port with an open port.")


# A data port runs at most this many reachability checks at once; more are answered "busy".
_MAX_CONCURRENT_REACH = 4


class ReachChecks:
    """A data port's side of `check_reachable`: dial the requester's address back, answer the round trip.

    reply(identity, kind, step, index, payload) answers on the port's ROUTER; runs on its loop thread.
    """

    def __init__(self, context: zmq.asyncio.Context, keys: CurveKeys | None,
                 reply: Callable[[Any, str, int, int, bytes], None], reject: Callable[[str], None]) -> None:
        self._context, self._keys, self._reply, self._reject = context, keys, reply, reject
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, identity: Any, request: Message) -> None:
        try:
            address, timeout, key = parse_reach_request(request.payload)
        except ValueError as error:
            self._reject(f"bad reachability request: {error}")
            return
        if len(self._tasks) >= _MAX_CONCURRENT_REACH:
            busy = wire.ReachResultBody(busy=True)
            self._reply(identity, wire.REACH_RESULT, 0, request.index, wire.pack_body(busy))
            return

        async def reach() -> None:
            # dial back as a curve client of the requester's key when both sides have keys, else plainly
            curve = self._keys is not None and key is not None
            rtt = await probe_async(self._context, address, timeout, keys=self._keys if curve else None,
                                    server_key=key if curve else None)
            self._reply(identity, wire.REACH_RESULT, 0, request.index, wire.pack_body(wire.ReachResultBody(rtt=rtt)))

        task = asyncio.ensure_future(reach())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()


async def probe_async(context: zmq.asyncio.Context, address: str, timeout: float, *, keys: CurveKeys | None = None,
                      server_key: str | None = None) -> float | None:
    """`probe` for code running on an event loop: one ping's round trip through `context`, or None.

    keys, server_key: both or neither; with them the ping goes as a curve client of `server_key`.
    """
    check_address(address)
    check_curve_pair(keys, server_key)
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IPV6, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_HEADER_BYTES)
    nonce = random.getrandbits(31)
    try:
        if keys is not None and server_key is not None:
            curve_client(sock, keys, server_key)
        sock.connect(address)
        start = time.perf_counter()
        frames = wire.pack(Message(wire.PING, 0, nonce, b""), sender="reach-probe", plan_version=0)
        await asyncio.wait_for(sock.send_multipart(frames), timeout)
        while True:
            remaining = timeout - (time.perf_counter() - start)
            reply = await asyncio.wait_for(sock.recv_multipart(copy=False), max(remaining, 0.0))
            try:
                message = wire.unpack(reply, max_message_bytes=0)
            except wire.WireError:
                continue
            if message.kind == wire.PONG and message.index == nonce:
                return time.perf_counter() - start
    except (asyncio.TimeoutError, zmq.ZMQError):
        return None
    finally:
        sock.close(linger=0)


def _ping(sock: zmq.Socket[bytes], deadline: float, payload: bytes) -> float | None:
    nonce = random.getrandbits(31)
    start = time.perf_counter()
    send_control(sock, wire.PING, payload, index=nonce)
    reply = _await_kind(sock, wire.PONG, nonce, deadline)
    return None if reply is None else time.perf_counter() - start


def _await_kind(sock: zmq.Socket[bytes], kind: str, nonce: int, deadline: float) -> Message | None:
    """The reply of `kind` to request `nonce`, skipping late answers to earlier requests."""
    while True:
        reply = receive_reply(sock, deadline)
        if reply is None or (reply.kind == kind and reply.index == nonce):
            return reply
