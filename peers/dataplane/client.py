"""Data-port addresses, and blocking request/reply for one-shot clients outside a transport.

Probes, reachability checks and state fetches talk to a peer that may not know them (a newcomer
has no plan yet), so they open a short-lived DEALER socket, send a control message to the peer's
ROUTER and wait for its answer. They run in the caller's thread with a plain zmq context: no
event loop, no background thread, nothing left behind after the `with` block. In a swarm with
curve keys, pass this host's `keys` and the peer's `server_key`: the socket is then a CURVE client,
and the peer answers only if it admits `keys.public` (otherwise the request simply times out).
"""
from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import zmq

from peers.dataplane import wire
from peers.dataplane.transport import Message
from peers.security import CurveKeys, curve_client

__all__ = ["check_address", "bind_host", "advertised_host", "open_dealer", "check_curve_pair", "send_control",
           "receive_reply"]

_ADDRESS = re.compile(r"^tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


def check_address(address: str, *, what: str = "peer address") -> str:
    """Return `address` if it is `tcp://HOST:PORT` with a port in 1..65535, else raise ValueError."""
    match = _ADDRESS.match(address) if isinstance(address, str) else None
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{what} {address!r} must look like tcp://HOST:PORT (e.g. tcp://10.0.0.5:7000)")
    return address


def bind_host(host: str) -> str:
    """The zmq bind host: "*" for any wildcard spelling."""
    return "*" if host in ("0.0.0.0", "*", "") else host


def advertised_host(host: str, advertise_host: str | None) -> str:
    """The host others dial: explicit, else the bound one, else this machine's outbound address."""
    if advertise_host:
        return advertise_host
    if bind_host(host) != "*":
        return host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_socket:
        try:
            probe_socket.connect(("192.0.2.1", 9))  # no packet is sent; picks the outbound interface
            return str(probe_socket.getsockname()[0])
        except OSError:
            return "127.0.0.1"


@contextmanager
def open_dealer(address: str, *, max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES,
                keys: CurveKeys | None = None, server_key: str | None = None) -> Iterator[zmq.Socket[bytes]]:
    """A DEALER connected to `address` with linger 0 and a receive size limit; closed on exit.

    keys, server_key: this host's curve key pair and the peer's public key, both or neither
    (ValueError otherwise): with them the DEALER is a CURVE client of that peer.
    """
    check_address(address)
    check_curve_pair(keys, server_key)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IPV6, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max(max_message_bytes, wire.MAX_HEADER_BYTES))
        if keys is not None and server_key is not None:
            curve_client(sock, keys, server_key)
        sock.connect(address)
        yield sock
    finally:
        sock.close(linger=0)
        context.term()


def check_curve_pair(keys: CurveKeys | None, server_key: str | None) -> None:
    """ValueError unless a client has both its `keys` and the `server_key`, or neither (open swarm)."""
    if (keys is None) != (server_key is None):
        missing = "keys (this host's CurveKeys)" if keys is None else "server_key (the peer's curve public key)"
        raise ValueError(f"a curve client needs both keys and server_key; {missing} is missing")


def send_control(sock: zmq.Socket[bytes], kind: str, payload: bytes = b"", *, step: int = 0, index: int = 0,
                 sender: str = "client") -> None:
    """Send one control message (no plan version: control kinds are exempt from it)."""
    sock.send_multipart(wire.pack(Message(kind, step, index, payload), sender=sender, plan_version=0), copy=False)


def receive_reply(sock: zmq.Socket[bytes], deadline: float, *, max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES,
                  ) -> Message | None:
    """The next well-formed message before `deadline` (time.monotonic), or None when time runs out.

    Malformed replies are skipped: a misbehaving peer can make a request time out, never crash it.
    """
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
            return None
        frames = sock.recv_multipart(copy=False)
        try:
            return wire.unpack(frames, max_message_bytes=max_message_bytes)
        except wire.WireError:
            continue
