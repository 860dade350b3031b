"""Links timed from the training traffic: a request and its response, less what the responder held."""
from __future__ import annotations

import threading
import time

import pytest

from peers.daemon.links import traffic_links
from peers.dataplane.meter import MIN_SAMPLES, LinkMeter
from peers.dataplane.transport import Message
from peers.dataplane.zmq_transport import ZmqTransport
from peers.protocol import Link


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _exchange(requester: LinkMeter, responder: LinkMeter, clock: Clock, step: int, *, nbytes: int = 50_000,
              one_way_s: float = 0.05, held_s: float = 0.3) -> None:
    """One act -> grad pair between two meters on one clock: each way takes `one_way_s`."""
    requester.sent("b", "act", step, 0, nbytes)
    clock.now += one_way_s
    responder.arrived("a", "act", step, 0, nbytes, None)
    clock.now += held_s
    held = responder.held_us("a", "grad", step, 0)
    clock.now += one_way_s
    requester.arrived("b", "grad", step, 0, nbytes, held)


def test_the_reading_is_the_bytes_over_the_round_trip_less_what_the_responder_held():
    clock = Clock()
    a, b = LinkMeter(clock), LinkMeter(clock)
    for step in range(MIN_SAMPLES - 1):
        _exchange(a, b, clock, step)
    assert a.bandwidth_gbps("b", latency_s=0.0) is None  # too few samples to trust
    _exchange(a, b, clock, MIN_SAMPLES)
    # 100 kB both ways in 0.1 s of link time (the 0.3 s held never counts): 8 Mbit/s; 2 ms of latency each way
    assert a.bandwidth_gbps("b", latency_s=0.0) == pytest.approx(0.008)
    assert a.bandwidth_gbps("b", latency_s=0.002) == pytest.approx(100_000 * 8 / 0.096 / 1e9)
    assert a.fastest_round_trip_s("b") == pytest.approx(0.1)
    assert b.bandwidth_gbps("a", latency_s=0.0) is None  # the responder times nothing


def test_the_best_sample_is_the_reading_and_queueing_only_lowers_others():
    clock = Clock()
    a, b = LinkMeter(clock), LinkMeter(clock)
    for step, one_way in enumerate([0.2, 0.05, 0.3, 0.1, 0.4]):
        _exchange(a, b, clock, step, one_way_s=one_way)
    assert a.bandwidth_gbps("b", latency_s=0.0) == pytest.approx(0.008)


def test_fast_transfers_are_left_to_the_probes():
    clock = Clock()
    a, b = LinkMeter(clock), LinkMeter(clock)
    for step in range(2 * MIN_SAMPLES):
        _exchange(a, b, clock, step, one_way_s=0.002)  # 4 ms round trips: scheduling noise on a busy CPU
    assert a.bandwidth_gbps("b", latency_s=0.0) is None


def test_on_a_link_probed_fast_only_messages_that_would_take_long_on_it_count():
    clock = Clock()
    a, b = LinkMeter(clock), LinkMeter(clock)
    for step in range(MIN_SAMPLES):
        _exchange(a, b, clock, step, one_way_s=0.02)  # 100 kB in 40 ms: a CPU's delay, not the link's rate
    assert a.bandwidth_gbps("b", latency_s=0.0, probed_gbps=0.01) == pytest.approx(0.02)  # 80 ms at 10 Mbit/s
    assert a.bandwidth_gbps("b", latency_s=0.0, probed_gbps=1.0) is None  # 0.8 ms at 1 Gbit/s: left to the probe


def test_unmatched_forged_and_non_training_messages_make_no_sample():
    clock = Clock()
    a = LinkMeter(clock)
    a.arrived("b", "grad", 1, 0, 1000, 5)  # a response to nothing sent
    a.sent("b", "act", 2, 0, 1000)
    clock.now += 0.1
    a.arrived("b", "grad", 2, 0, 1000, None)  # no held_us: an old peer
    a.sent("b", "act", 3, 0, 1000)
    clock.now += 0.1
    a.arrived("b", "grad", 3, 0, 1000, 10**9)  # "held" longer than the round trip: forged
    a.sent("b", "ping", 4, 0, 1000)
    assert a.held_us("b", "ping", 4, 0) is None and a.peers() == []


def test_a_link_slower_than_probed_or_unprobed_is_announced_at_its_traffic_rate():
    clock = Clock()
    a, b = LinkMeter(clock), LinkMeter(clock)
    for step in range(MIN_SAMPLES):
        _exchange(a, b, clock, step)
    probed = {"b": Link(bandwidth_gbps=0.02, latency_ms=2.0), "c": Link(bandwidth_gbps=0.5, latency_ms=1.0)}
    readings = traffic_links(probed, a)
    assert set(readings) == {"b"}
    assert readings["b"] == Link(bandwidth_gbps=pytest.approx(100_000 * 8 / 0.096 / 1e9, rel=1e-4), latency_ms=2.0,
                                 from_traffic=True)
    failed = traffic_links({"b": Link(bandwidth_gbps=0.0017, latency_ms=1000.0, at_most=True)}, a)["b"]
    assert failed.bandwidth_gbps == pytest.approx(0.008) and failed.latency_ms == pytest.approx(50.0)  # 0.1 s / 2
    # a probe that read the link slower than its traffic goes (a shaper's burst, or a busy CPU's traffic) stands
    slower = Link(bandwidth_gbps=0.004, latency_ms=2.0)
    assert traffic_links({"b": slower}, a) == {"b": slower}


def test_zmq_transports_stamp_what_the_responder_held_and_time_the_link():
    """Real sockets: the responder holds each request 0.2 s, the requester's samples leave that out."""
    a, b = ZmqTransport("a"), ZmqTransport("b")
    try:
        a.connect("b", b.address)
        b.connect("a", a.address)
        payload = bytes(200_000)

        def respond() -> None:
            for step in range(3):
                got = b.recv("a", "act", step, 0, timeout=10)
                time.sleep(0.2)
                b.send("a", Message("grad", got.step, got.index, payload))

        responder = threading.Thread(target=respond)
        responder.start()
        round_trips = []
        for step in range(3):
            started = time.monotonic()
            a.send("b", Message("act", step, 0, payload))
            back = a.recv("b", "grad", step, 0, timeout=10)
            round_trips.append(time.monotonic() - started)
            assert back.held_us is not None and back.held_us >= 200_000
        responder.join()
        fastest = a.meter.fastest_round_trip_s("b")
        assert a.meter.peers() == ["b"] and min(round_trips) >= 0.2
        assert fastest is not None and 0 < fastest < 0.1, fastest
    finally:
        a.close()
        b.close()
