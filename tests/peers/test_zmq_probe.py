"""Probes through a live transport's data port: latency, bandwidth, and the reachability check."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from peers.dataplane.probe import check_reachable, measure_bandwidth, probe, unreachable_hint
from peers.dataplane.transport import PeerTimeout
from peers.dataplane.zmq_transport import ZmqTransport
from tests.threads import wait_until


@pytest.fixture
def live():
    with ZmqTransport("target") as transport:
        yield transport


@pytest.fixture
def nobody() -> str:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{placeholder.getsockname()[1]}"


def test_probe_measures_a_loopback_round_trip(live):
    rtt = probe(live.address, timeout=5)
    assert rtt is not None and 0 < rtt < 1.0
    assert live.stats()["received"]["ping"] == 4  # one to connect, three measured


def test_probe_of_a_silent_address_returns_none_within_its_timeout(nobody):
    start = time.monotonic()
    assert probe(nobody, timeout=0.3) is None
    assert time.monotonic() - start < 2.0


def test_bandwidth_probe_moves_the_bytes_it_claims(live):
    rate = measure_bandwidth(live.address, nbytes=2 * 1024 * 1024, timeout=10)
    assert rate is not None and rate > 1e6  # loopback moves far more than 1 MB/s
    assert live.stats()["bytes_received"]["ping"] > 2 * 1024 * 1024


def test_reachability_is_checked_by_another_peer(live, nobody):
    with ZmqTransport("newcomer") as newcomer:
        rtt = check_reachable(via=live.address, address=newcomer.address, timeout=5)
        assert rtt is not None and rtt > 0
        assert newcomer.stats()["received"]["ping"] == 1
    assert check_reachable(via=live.address, address=nobody, timeout=0.5) is None
    with pytest.raises(PeerTimeout, match="did not answer"):
        check_reachable(via=nobody, address=live.address, timeout=0.3)
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        check_reachable(via=live.address, address="localhost:1")


def test_a_busy_checker_is_asked_again_not_taken_for_unreachable(live, nobody):
    """Five newcomers joining at once: the checker runs 4 checks at a time and answers "busy"."""
    slow = [threading.Thread(target=check_reachable, args=(live.address, nobody, 3.0)) for _ in range(4)]
    for thread in slow:
        thread.start()
    try:
        with ZmqTransport("fifth") as newcomer:
            _wait_for_reach_tasks(live, 4)
            rtt = check_reachable(via=live.address, address=newcomer.address, timeout=8)
            assert rtt is not None and rtt > 0
    finally:
        for thread in slow:
            thread.join(timeout=10)
    assert live.stats()["received"]["reach_request"] > 5  # the fifth asked again after "busy"


def _wait_for_reach_tasks(transport: ZmqTransport, count: int) -> None:
    wait_until(lambda: transport.stats()["received"].get("reach_request", 0) >= count, 5.0, "the slow checks")


def test_unreachable_hint_says_what_to_open_and_which_flag_to_use():
    hint = unreachable_hint("tcp://192.168.1.7:7000", via="tcp://10.0.0.1:7000")
    assert "TCP port 7000" in hint and "--host" in hint and "192.168.1.7" in hint and "10.0.0.1" in hint
