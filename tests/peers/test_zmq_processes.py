"""ZmqTransport between separate processes (multiprocessing spawn): the live swarm's situation."""
from __future__ import annotations

import hashlib
import multiprocessing
import random

import pytest

from peers.dataplane.probe import probe
from peers.dataplane.transport import Message, PeerTimeout
from peers.dataplane.zmq_transport import ZmqTransport

pytestmark = pytest.mark.slow

SIZES = [0, 1, 1000, 70_000, 8 * 1024 * 1024]


def _echo_peer(addresses, parent_address, count: int) -> None:
    """Child process: answer each "act" i from the parent with "grad" i = sha256 of the payload."""
    with ZmqTransport("child") as transport:
        addresses.put(transport.address)
        transport.connect("parent", parent_address.get(timeout=30))
        for index in range(count):
            message = transport.recv("parent", "act", 1, index, timeout=30)
            transport.send("parent", Message("grad", 1, index, hashlib.sha256(message.payload).digest(),
                                             sample_ids=message.sample_ids))
        transport.recv("parent", "bye", 1, 0, timeout=30)


@pytest.fixture
def child_peer():
    """Start an echo child for `count` messages; always reaped, killed if it outlives the test."""
    context = multiprocessing.get_context("spawn")
    started = []

    def start(parent: ZmqTransport, count: int):
        addresses, parent_address = context.Queue(), context.Queue()
        process = context.Process(target=_echo_peer, args=(addresses, parent_address, count), daemon=True)
        process.start()
        started.append(process)
        parent_address.put(parent.address)
        parent.connect("child", addresses.get(timeout=60))
        return process

    yield start
    for process in started:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        assert not process.is_alive()


def test_round_trip_between_processes_in_any_order(child_peer):
    with ZmqTransport("parent") as parent:
        process = child_peer(parent, len(SIZES))
        payloads = [random.randbytes(size) for size in SIZES]
        order = list(range(len(SIZES)))
        random.Random(1).shuffle(order)
        for index in order:
            parent.send("child", Message("act", 1, index, payloads[index], sample_ids=(index, 100 + index)))
        for index in reversed(range(len(SIZES))):
            reply = parent.recv("child", "grad", 1, index, timeout=30)
            assert bytes(reply.payload) == hashlib.sha256(payloads[index]).digest()
            assert reply.sample_ids == (index, 100 + index)
        parent.send("child", Message("bye", 1, 0, b""))
        process.join(timeout=30)
        assert process.exitcode == 0


def test_a_killed_peer_makes_recv_time_out_not_hang(child_peer):
    with ZmqTransport("parent") as parent:
        process = child_peer(parent, 2)
        parent.send("child", Message("act", 1, 0, b"first"))
        parent.recv("child", "grad", 1, 0, timeout=30)
        process.kill()
        process.join(timeout=10)
        parent.send("child", Message("act", 1, 1, b"second"))  # queued for a dead peer: no error yet
        with pytest.raises(PeerTimeout, match="'child'"):
            parent.recv("child", "grad", 1, 1, timeout=0.5)
        assert probe(parent.peers()["child"], timeout=0.3) is None
