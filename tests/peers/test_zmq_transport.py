"""ZmqTransport between real sockets on 127.0.0.1, two endpoints in one process (threads)."""
from __future__ import annotations

import os
import random
import socket
import threading
import time

import msgpack
import pytest
import torch
import zmq

import compression
from peers.dataplane import wire
from peers.dataplane.transport import Message, PeerTimeout, TransportClosed
from peers.dataplane.zmq_transport import ZmqTransport
from tests.threads import wait_until


@pytest.fixture
def pair():
    a, b = ZmqTransport("a"), ZmqTransport("b")
    a.connect("b", b.address)
    b.connect("a", a.address)
    yield a, b
    a.close()
    b.close()


def test_round_trip_between_threads_keeps_every_field(pair):
    a, b = pair
    payload = os.urandom(3 * 1024 * 1024)

    def echo():
        got = b.recv("a", "act", 4, 1, timeout=5)
        b.send("a", Message("grad", got.step, got.index, bytes(got.payload), sample_ids=got.sample_ids))

    thread = threading.Thread(target=echo)
    thread.start()
    a.send("b", Message("act", 4, 1, payload, sample_ids=(7, 9, 2**40)))
    back = a.recv("b", "grad", 4, 1, timeout=5)
    thread.join()
    assert bytes(back.payload) == payload
    assert (back.sender, back.sample_ids, back.plan_version) == ("b", (7, 9, 2**40), 0)


def test_arrival_order_does_not_matter(pair):
    a, b = pair
    keys = [(kind, step, index) for kind in ("act", "ar-reduce") for step in range(3) for index in range(4)]
    for kind, step, index in keys:
        a.send("b", Message(kind, step, index, f"{kind}/{step}/{index}".encode()))
    random.Random(0).shuffle(keys)
    for kind, step, index in keys:
        assert bytes(b.recv("a", kind, step, index, timeout=5).payload) == f"{kind}/{step}/{index}".encode()


def test_compressed_tensor_decodes_the_same_after_the_wire(pair):
    a, b = pair
    frame = compression.encode(torch.randn(64, 256), "q4")
    a.send("b", Message("act", 0, 0, frame))
    received = b.recv("a", "act", 0, 0, timeout=5).payload
    assert torch.equal(compression.decode(received), compression.decode(frame))


def test_stats_count_messages_and_bytes_per_kind(pair):
    a, b = pair
    for index in range(3):
        a.send("b", Message("act", 0, index, bytes(1000)))
    a.send("b", Message("grad", 0, 0, bytes(10)))
    for index in range(3):
        b.recv("a", "act", 0, index, timeout=5)
    b.recv("a", "grad", 0, 0, timeout=5)
    wait_until(lambda: a.stats()["sent"].get("grad") == 1)
    sent, got = a.stats(), b.stats()
    assert sent["sent"] == {"act": 3, "grad": 1}
    assert sent["payload_bytes_sent"] == {"act": 3000, "grad": 10}
    assert sent["bytes_sent"]["act"] > 3000 and sent["bytes_sent"] == got["bytes_received"]
    assert got["received"] == {"act": 3, "grad": 1}


def test_stale_plan_version_is_dropped_and_counted_newer_is_held(pair):
    a, b = pair
    b.set_plan_version(2)
    a.send("b", Message("act", 0, 0, b"old", plan_version=1))
    a.send("b", Message("act", 0, 1, b"next", plan_version=3))
    a.send("b", Message("act", 0, 2, b"current", plan_version=2))
    assert bytes(b.recv("a", "act", 0, 2, timeout=5).payload) == b"current"
    wait_until(lambda: b.stats()["held_future"] == 1)
    assert b.stats()["dropped_stale"] == {"act": 1}
    with pytest.raises(PeerTimeout):
        b.recv("a", "act", 0, 0, timeout=0.2)
    with pytest.raises(PeerTimeout):
        b.recv("a", "act", 0, 1, timeout=0.2)
    b.set_plan_version(3)
    assert bytes(b.recv("a", "act", 0, 1, timeout=1).payload) == b"next"


def test_adopting_a_plan_purges_what_the_old_plan_left_unclaimed(pair):
    """A step rerun under the new plan must never take a leftover of the aborted one."""
    a, b = pair
    b.set_plan_version(2)
    a.send("b", Message("act", 5, 0, b"old plan", plan_version=2))
    wait_until(lambda: b.stats()["received"].get("act") == 1)
    a.send("b", Message("act", 5, 0, b"new plan", plan_version=3))  # held: b has not adopted plan 3 yet
    wait_until(lambda: b.stats()["held_future"] == 1)
    b.set_plan_version(3)
    assert b.stats()["dropped_stale"] == {"act": 1}
    assert bytes(b.recv("a", "act", 5, 0, timeout=5).payload) == b"new plan"
    with pytest.raises(PeerTimeout):
        b.recv("a", "act", 5, 0, timeout=0.2)
    with pytest.raises(ValueError, match="older than the adopted 3"):
        b.set_plan_version(2)


def test_garbage_from_a_raw_zmq_socket_is_rejected_while_training_goes_on(pair):
    a, b = pair
    context = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(b.address)
    header = wire.pack(Message("act", 0, 0, b""), sender="x", plan_version=0)[0]
    reach, pong = (wire.pack(Message(kind, 0, 0, b""), sender="x", plan_version=0)[0]
                   for kind in (wire.REACH_REQUEST, wire.PONG))
    garbage = [[os.urandom(40)], [os.urandom(10), os.urandom(10)], [header], [header, b"", b""],
               [b"\x97\x01\xa3act", b"x"], [msgpack.packb([1, "act", "0", 0, 0, "x", []]), b""],
               [reach, b"\xc1"], [reach, wire.pack_body(wire.ReachRequestBody(address="nowhere", timeout=1.0))],
               [pong, b""]]
    try:
        for frames in garbage:
            raw.send_multipart(frames)
        a.send("b", Message("act", 1, 0, b"real"))
        assert bytes(b.recv("a", "act", 1, 0, timeout=5).payload) == b"real"
        wait_until(lambda: b.stats()["rejected"]["malformed"] == len(garbage))
        assert b.stats()["last_rejection"]
    finally:
        raw.close()
        context.term()


def test_raw_tcp_garbage_does_not_disturb_the_port(pair):
    a, b = pair
    with socket.create_connection(("127.0.0.1", b.port), timeout=5) as intruder:
        intruder.sendall(os.urandom(4096))
    a.send("b", Message("act", 0, 0, b"fine"))
    assert bytes(b.recv("a", "act", 0, 0, timeout=5).payload) == b"fine"


def test_oversized_message_is_refused_by_the_parser_the_socket_and_the_sender():
    small = ZmqTransport("small", max_message_bytes=64 * 1024)  # the socket itself allows 256 KiB frames
    big = ZmqTransport("big")
    context = zmq.Context()
    intruder = context.socket(zmq.DEALER)
    intruder.setsockopt(zmq.LINGER, 0)
    try:
        big.connect("small", small.address)
        big.send("small", Message("act", 0, 0, bytes(65 * 1024)))  # past the parser's limit
        intruder.connect(small.address)
        intruder.send_multipart(wire.pack(Message("act", 0, 2, bytes(300 * 1024)), sender="big", plan_version=0))
        big.send("small", Message("act", 0, 1, bytes(64 * 1024)))
        assert small.recv("big", "act", 0, 1, timeout=5).payload.nbytes == 64 * 1024
        wait_until(lambda: small.stats()["rejected"]["malformed"] == 1)
        assert "max_message_bytes" in small.stats()["last_rejection"]
        for index in (0, 2):  # the 300 KiB frame never got past zmq.MAXMSGSIZE
            with pytest.raises(PeerTimeout):
                small.recv("big", "act", 0, index, timeout=0.2)
        with pytest.raises(ValueError, match="max_message_bytes"):
            small.send("big", Message("act", 0, 0, bytes(65 * 1024)))
    finally:
        intruder.close()
        context.term()
        small.close()
        big.close()


def test_close_wakes_a_waiting_receiver():
    transport = ZmqTransport("lonely")
    errors: list[BaseException] = []

    def wait():
        try:
            transport.recv("nobody", "act", 0, 0, timeout=30)
        except BaseException as error:  # noqa: BLE001 - the test inspects it
            errors.append(error)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.1)
    transport.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and isinstance(errors[0], TransportClosed)
    with pytest.raises(TransportClosed):
        transport.send("nobody", Message("act", 0, 0, b""))
    transport.close()  # idempotent


def test_dead_peer_times_out_on_recv_and_on_a_full_send_queue():
    with socket.socket() as placeholder:  # a port with nothing listening
        placeholder.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{placeholder.getsockname()[1]}"
    transport = ZmqTransport("alive", max_pending=2, send_timeout=0.3)
    try:
        transport.connect("dead", dead)
        with pytest.raises(PeerTimeout, match="'dead'"):
            transport.recv("dead", "grad", 0, 0, timeout=0.2)
        with pytest.raises(PeerTimeout, match="accepted no data"):
            for index in range(20):
                transport.send("dead", Message("act", 0, index, bytes(100)))
        assert index >= 2
    finally:
        transport.close()


def test_unknown_peer_bad_address_and_busy_port_give_clear_errors(pair):
    a, b = pair
    with pytest.raises(ValueError, match="connect\\('c'"):
        a.send("c", Message("act", 0, 0, b""))
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        a.connect("c", "127.0.0.1:5000")
    with pytest.raises(OSError, match="--port"):
        ZmqTransport("clash", port=a.port)


def test_send_to_self_and_reconnect_to_a_new_address(pair):
    a, b = pair
    a.send("a", Message("ar-gather", 0, 0, b"mine"))
    assert a.recv("a", "ar-gather", 0, 0, timeout=1).payload == b"mine"
    c = ZmqTransport("c")
    try:
        a.connect("b", c.address)  # "b" moved to a new address
        a.send("b", Message("act", 0, 0, b"moved"))
        assert bytes(c.recv("a", "act", 0, 0, timeout=5).payload) == b"moved"
        a.disconnect("b")
        assert "b" not in a.peers()
    finally:
        c.close()
