"""The delay line in `ZmqTransport`: latency added per link, the sender never blocked, no reordering."""
from __future__ import annotations

import json
import statistics
import time

import pytest

from peers.dataplane.client import check_address
from peers.dataplane.delay_line import DelayLine
from peers.dataplane.probe import probe
from peers.dataplane.transport import Message
from peers.dataplane.zmq_transport import ZmqTransport

LATENCY_MS = 20.0


def _free_address() -> str:
    from swarm.launcher import free_port

    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def delayed_pair():
    """a -> b delayed by LATENCY_MS, b -> a by half of it; b's address fixed up front."""
    b_address = _free_address()
    b_port = int(b_address.rsplit(":", 1)[1])
    a_port = int(_free_address().rsplit(":", 1)[1])
    a_address = f"tcp://127.0.0.1:{a_port}"
    a = ZmqTransport("a", port=a_port, link_latency=DelayLine({b_address: LATENCY_MS}))
    b = ZmqTransport("b", port=b_port, link_latency=DelayLine({a_address: LATENCY_MS / 2}))
    a.connect("b", b.address)
    b.connect("a", a.address)
    yield a, b
    a.close()
    b.close()


def test_a_message_arrives_after_the_latency_and_send_returns_at_once(delayed_pair):
    a, b = delayed_pair
    a.send("b", Message("act", 1, 0, b"warm"))  # the first message also opens the connection
    b.recv("a", "act", 1, 0, timeout=5)
    trips = []
    for index in range(1, 8):
        start = time.monotonic()
        a.send("b", Message("act", 1, index, b"x" * 1000))
        returned = time.monotonic() - start
        b.recv("a", "act", 1, index, timeout=5)
        trips.append(time.monotonic() - start)
        assert returned < 0.005, "send must not wait for the delay line"
    assert LATENCY_MS / 1e3 <= statistics.median(trips) < LATENCY_MS / 1e3 + 0.004, trips


def test_round_trip_is_the_sum_of_both_directions(delayed_pair):
    a, b = delayed_pair
    rtts = []
    for index in range(6):
        start = time.monotonic()
        a.send("b", Message("act", 2, index, b"ping"))
        b.recv("a", "act", 2, index, timeout=5)
        b.send("a", Message("grad", 2, index, b"pong"))
        a.recv("b", "grad", 2, index, timeout=5)
        rtts.append(time.monotonic() - start)
    expected = 1.5 * LATENCY_MS / 1e3
    assert expected <= statistics.median(rtts[1:]) < expected + 0.004, rtts


def test_a_burst_keeps_its_order_and_leaves_together(delayed_pair):
    a, b = delayed_pair
    start = time.monotonic()
    for index in range(50):
        a.send("b", Message("act", 3, index, index.to_bytes(4, "big")))
    sent = time.monotonic() - start
    got = [int.from_bytes(bytes(b.recv("a", "act", 3, index, timeout=5).payload), "big") for index in range(50)]
    elapsed = time.monotonic() - start
    assert got == list(range(50))
    assert sent < 0.05  # 50 sends queued without waiting 50 x the latency
    assert LATENCY_MS / 1e3 <= elapsed < 3 * LATENCY_MS / 1e3


def test_probes_see_the_round_trip_of_the_pinged_side():
    """A pong is held for the round trip to the pinging host, so link probes measure the latency."""
    address = _free_address()
    port = int(address.rsplit(":", 1)[1])
    with ZmqTransport("b", port=port, link_latency=DelayLine({"tcp://127.0.0.1:1": LATENCY_MS})):
        rtt = probe(address, timeout=5.0)
    assert rtt is not None and 2 * LATENCY_MS / 1e3 <= rtt < 2 * LATENCY_MS / 1e3 + 0.01


def test_without_a_delay_line_nothing_is_held():
    with ZmqTransport("a") as a, ZmqTransport("b") as b:
        a.connect("b", b.address)
        a.send("b", Message("act", 1, 0, b"warm"))
        b.recv("a", "act", 1, 0, timeout=5)
        start = time.monotonic()
        a.send("b", Message("act", 1, 1, b"x"))
        b.recv("a", "act", 1, 1, timeout=5)
        assert time.monotonic() - start < 0.01
        assert probe(b.address) < 0.01


def test_latency_files_are_checked(tmp_path):
    path = tmp_path / "latency.json"
    path.write_text(json.dumps({"tcp://10.0.0.2:40000": 12.5, "tcp://10.0.0.3:40000": 0}))
    line = DelayLine.load(path)
    assert line.seconds("tcp://10.0.0.2:40000") == pytest.approx(0.0125)
    assert line.seconds("tcp://10.0.0.3:40000") == 0.0 and line.due("tcp://10.0.0.3:40000") == 0.0
    assert line.round_trip("10.0.0.2") == pytest.approx(0.025)
    assert line.to_dict() == {"tcp://10.0.0.2:40000": 12.5}
    assert not DelayLine({})
    for bad, why in (({"10.0.0.2:1": 1.0}, "tcp://HOST:PORT"), ({"tcp://h:1": -1}, "milliseconds"),
                     ({"tcp://h:1": "5"}, "milliseconds"), ({"tcp://h:1": float("nan")}, "milliseconds")):
        with pytest.raises(ValueError, match=why):
            DelayLine(bad)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        DelayLine.load(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        DelayLine.load(path)
    with pytest.raises(ValueError, match="cannot read"):
        DelayLine.load(tmp_path / "missing.json")
    assert check_address("tcp://10.0.0.2:40000")
