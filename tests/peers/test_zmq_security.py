"""The data plane under CurveZMQ: only admitted keys get in, and a message's sender is its key's name.

Real sockets on 127.0.0.1. The first test after the helpers is the issue's "Must show": a plain zmq
client at a curve peer's data port gets no answer to a well-formed ping, and nothing it sends is
delivered.
"""
from __future__ import annotations

import pytest
import zmq

from peers.dataplane import wire
from peers.dataplane.client import open_dealer
from peers.dataplane.probe import check_reachable, measure_bandwidth, probe
from peers.dataplane.transport import Message, PeerTimeout
from peers.dataplane.zmq_transport import ZmqTransport
from peers.security import Admission, CurveKeys, curve_client
from peers.state_transfer import StateTransferError, fetch_state, fetch_state_any
from tests.threads import wait_until

NO_REPLY_S = 2.0


@pytest.fixture
def keys() -> dict[str, CurveKeys]:
    return {name: CurveKeys.generate() for name in ("a", "b", "c", "stranger")}


@pytest.fixture
def pair(keys):
    """Curve transports a and b, each admitting the other (and b admitting c too)."""
    a = ZmqTransport("a", keys=keys["a"], admission=Admission({"b": keys["b"].public}))
    b = ZmqTransport("b", keys=keys["b"], admission=Admission({"a": keys["a"].public, "c": keys["c"].public}))
    a.connect("b", b.address)
    b.connect("a", a.address)
    yield a, b
    a.close()
    b.close()


def _unauthenticated(transport: ZmqTransport) -> int:
    return int(transport.stats()["rejected"]["unauthenticated"])


def _raw_dealer(context: zmq.Context, address: str, keys: CurveKeys | None = None,
                server_key: str | None = None) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None and server_key is not None:
        curve_client(sock, keys, server_key)
    sock.connect(address)
    return sock


def _send(sock: zmq.Socket, kind: str, step: int, index: int, payload: bytes, sender: str,
          plan_version: int = 0) -> None:
    """Queue one message; never blocks (after a refused handshake zmq has no pipe to queue it in)."""
    try:
        sock.send_multipart(wire.pack(Message(kind, step, index, payload), sender=sender, plan_version=plan_version),
                            flags=zmq.NOBLOCK)
    except zmq.Again:
        pass


def test_plain_zmq_client_gets_no_pong_and_delivers_nothing(pair):
    a, b = pair
    context = zmq.Context()
    try:
        sock = _raw_dealer(context, b.address)
        _send(sock, wire.PING, 0, 7, b"", sender="a")  # well-formed, and naming an admitted peer
        _send(sock, "act", 1, 0, b"forged", sender="a")
        assert sock.poll(int(NO_REPLY_S * 1000)) == 0
        sock.close()
    finally:
        context.term()
    with pytest.raises(PeerTimeout):
        b.recv("a", "act", 1, 0, timeout=0.2)
    assert b.stats()["received"].get("ping", 0) == 0
    wait_until(lambda: _unauthenticated(b) >= 1)
    assert "CURVE" in b.stats()["last_rejection"]
    a.send("b", Message("act", 1, 0, b"real"))  # the port still serves its admitted peers
    assert bytes(b.recv("a", "act", 1, 0, timeout=5).payload) == b"real"


def test_admitted_curve_transports_exchange_messages_under_their_authenticated_names(pair):
    a, b = pair
    a.send("b", Message("act", 3, 1, b"forward", sample_ids=(4, 5)))
    got = b.recv("a", "act", 3, 1, timeout=5)
    assert (got.sender, bytes(got.payload), got.sample_ids) == ("a", b"forward", (4, 5))
    b.send("a", Message("grad", 3, 1, b"backward"))
    assert a.recv("b", "grad", 3, 1, timeout=5).sender == "b"
    assert _unauthenticated(a) == _unauthenticated(b) == 0


def test_an_unadmitted_curve_key_gets_no_reply_and_is_counted(pair, keys):
    _, b = pair
    context = zmq.Context()
    try:
        sock = _raw_dealer(context, b.address, keys["stranger"], b.keys.public)
        _send(sock, wire.PING, 0, 7, b"", sender="stranger")
        _send(sock, "act", 1, 0, b"hello", sender="stranger")
        assert sock.poll(int(NO_REPLY_S * 1000)) == 0
        sock.close()
    finally:
        context.term()
    assert _unauthenticated(b) >= 1
    assert keys["stranger"].public in b.stats()["last_rejection"]
    assert b.stats()["received"].get("act", 0) == 0
    assert probe(b.address, timeout=0.5, keys=keys["stranger"], server_key=b.keys.public) is None


def test_a_header_naming_another_admitted_peer_is_dropped_not_delivered_as_that_peer(pair, keys):
    _, b = pair
    context = zmq.Context()
    try:
        sock = _raw_dealer(context, b.address, keys["c"], b.keys.public)  # c is admitted, and claims to be a
        _send(sock, "ar-gather", 5, 0, b"forged chunk", sender="a")
        _send(sock, "ar-gather", 5, 1, b"own chunk", sender="c")
        assert bytes(b.recv("c", "ar-gather", 5, 1, timeout=5).payload) == b"own chunk"
        with pytest.raises(PeerTimeout):
            b.recv("a", "ar-gather", 5, 0, timeout=0.2)
        assert _unauthenticated(b) == 1
        assert "claims sender 'a'" in b.stats()["last_rejection"]
        _send(sock, wire.PING, 0, 9, b"", sender="anyone")  # a probe's header name is not checked
        assert sock.poll(5000) and wire.unpack(sock.recv_multipart()).kind == wire.PONG
        sock.close()
    finally:
        context.term()


def test_a_key_admitted_later_gets_in_and_a_revoked_one_is_refused(pair, keys):
    a, b = pair
    stranger = keys["stranger"]
    assert probe(b.address, timeout=0.5, keys=stranger, server_key=b.keys.public) is None
    b.admission.admit("newcomer", stranger.public)  # no restart: the next handshake succeeds
    assert probe(b.address, timeout=5, keys=stranger, server_key=b.keys.public) is not None
    b.admission.revoke("a")  # a's connection is already up: its messages are refused from now on
    before = _unauthenticated(b)
    a.send("b", Message("act", 2, 0, b"late"))
    wait_until(lambda: _unauthenticated(b) > before)
    assert "not admitted" in b.stats()["last_rejection"]
    with pytest.raises(PeerTimeout):
        b.recv("a", "act", 2, 0, timeout=0.2)


def test_probe_and_bandwidth_with_curve_keys(pair):
    a, b = pair
    rtt = probe(b.address, timeout=5, keys=a.keys, server_key=b.keys.public)
    assert rtt is not None and 0 < rtt < 1.0
    bandwidth = measure_bandwidth(b.address, nbytes=1 << 20, timeout=10, keys=a.keys, server_key=b.keys.public)
    assert bandwidth is not None and bandwidth > 0
    assert probe(b.address, timeout=0.5) is None  # the same port, without curve: silence


def test_reachability_check_dials_back_as_a_curve_client(keys):
    coordinator = ZmqTransport("coordinator", keys=keys["a"], admission=Admission({"peer": keys["b"].public}))
    peer = ZmqTransport("peer", keys=keys["b"], admission=Admission({"coordinator": keys["a"].public}))
    try:
        rtt = check_reachable(coordinator.address, peer.address, timeout=3, keys=peer.keys,
                              server_key=coordinator.keys.public)
        assert rtt is not None and 0 < rtt < 1.0
        peer.admission.revoke("coordinator")  # the peer refuses the dial-back: unreachable, not a timeout
        assert check_reachable(coordinator.address, peer.address, timeout=0.5, keys=peer.keys,
                               server_key=coordinator.keys.public) is None
    finally:
        coordinator.close()
        peer.close()


def test_state_transfer_with_curve_keys(pair, keys):
    a, b = pair
    blob = bytes(range(256)) * 4096
    b.serve_state(1, blob)
    assert fetch_state(b.address, 1, timeout=10, keys=a.keys, server_key=b.keys.public) == blob
    assert fetch_state_any([(b.address, b.keys.public)], 1, spread_key="a", timeout=10, keys=a.keys) == blob
    assert fetch_state_any({b.address: b.keys.public}, 1, spread_key="a", timeout=10, keys=a.keys) == blob
    with pytest.raises(StateTransferError, match="no answer"):
        fetch_state(b.address, 1, timeout=0.5, keys=keys["stranger"], server_key=b.keys.public)


def test_curve_settings_that_cannot_work_are_refused_clearly(pair, keys):
    a, b = pair
    with pytest.raises(ValueError, match="no curve key for peer 'nobody'"):
        a.connect("nobody", b.address)
    a.connect("b2", b.address, server_key=b.keys.public)  # an explicit key needs no admission
    with pytest.raises(ValueError, match="server_key"):
        with open_dealer(b.address, keys=a.keys):
            pass
    with pytest.raises(ValueError, match="keys"):
        probe(b.address, server_key=b.keys.public)
    with pytest.raises(ValueError, match="needs curve keys"):
        ZmqTransport("x", admission=Admission())


def test_an_open_transport_ignores_server_keys_and_answers_anyone():
    with ZmqTransport("open") as open_port, ZmqTransport("other") as other:
        other.connect("open", open_port.address, server_key=CurveKeys.generate().public)
        other.send("open", Message("act", 1, 0, b"x"))
        assert open_port.recv("other", "act", 1, 0, timeout=5).sender == "other"
        assert probe(open_port.address, timeout=5) is not None
