"""A link that cannot be measured is recorded as slow, and the plan's timeouts and cost use it."""
from __future__ import annotations

import socket
import threading

from peers.daemon.links import SLOW_GBPS, PlanLinkProber, plan_neighbours, probe_link
from peers.dataplane.zmq_transport import ZmqTransport
from peers.protocol import Codecs, Link, PeerRecord, PlanRecord, TrainingSpec
from swarm.coordinator.planning import Placement, PlanChange, PlanReason, predicted_step_s
from swarm.coordinator.timeouts import plan_timeouts


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def test_an_unreachable_peer_is_recorded_as_slow_not_as_fast():
    link = probe_link(_closed_port())
    assert link.at_most and link.bandwidth_gbps == SLOW_GBPS and link.latency_ms >= 1000
    with ZmqTransport("p2") as reachable:
        measured = probe_link(reachable.address)
    assert not measured.at_most and measured.bandwidth_gbps > 10 * SLOW_GBPS


def _plan(addresses: dict[str, str]) -> PlanRecord:
    timeouts = {"transfer_s": 1.0, "step_s": 1.0, "message_s": 10.0, "heartbeat_s": 2.0, "peer_ttl_s": 10.0,
                "commit_s": 60.0}
    return PlanRecord.from_wire({
        "version": 1, "start_step": 1, "grid": [["a", "b"], ["c", "d"]], "layers": [2, 2], "addresses": addresses,
        "sources": dict.fromkeys("abcd", {"kind": "init"}), "codecs": {},
        "training": {"model": "tiny", "batch": 4, "micro_batches": 2, "timeouts": timeouts},
        "reason": {"change": "first", "text": "test"}})


def test_every_link_a_plan_gives_a_peer_is_probed_and_an_unreachable_one_is_slow():
    with ZmqTransport("b") as pipeline_neighbour, ZmqTransport("d") as replica:
        plan = _plan({"a": _closed_port(), "b": pipeline_neighbour.address, "c": "tcp://127.0.0.1:1",
                      "d": replica.address})
        assert plan_neighbours(plan, "c") == ["a", "d"]  # its stage-0 neighbour, its stage's other replica
        measured: list[dict[str, Link]] = []
        prober = PlanLinkProber("c", None, measured.append, lambda: {peer for links in measured for peer in links})
        stop = threading.Event()
        thread = threading.Thread(target=prober.run, args=(stop,))
        thread.start()
        prober.follow(plan)
        while not measured and thread.is_alive():
            stop.wait(0.1)
        stop.set()
        thread.join(timeout=10)
        assert prober.measure(plan) == {}  # measured once
        assert PlanLinkProber("c", None, measured.append, lambda: {"a"}).measure(plan).keys() == {"d"}
    links = measured[0]
    assert set(links) == {"a", "d"}
    assert links["a"].at_most and links["a"].bandwidth_gbps == SLOW_GBPS
    assert not links["d"].at_most


def _records(link: Link | None) -> dict[str, PeerRecord]:
    links = {"b": link} if link is not None else {}
    return {"a": PeerRecord(name="a", address="tcp://127.0.0.1:1", device="cpu", tflops=1.0, memory_gb=8.0,
                            links=links),
            "b": PeerRecord(name="b", address="tcp://127.0.0.1:2", device="cpu", tflops=1.0, memory_gb=8.0)}


def test_the_timeouts_and_the_predicted_step_price_the_slow_link():
    placement = Placement([["a"], ["b"]], [2, 2], [], PlanReason(PlanChange.FIRST, ""))
    training, codecs = TrainingSpec(model="tiny", batch=8, micro_batches=2), Codecs()
    slow = Link(bandwidth_gbps=SLOW_GBPS, latency_ms=1000.0, at_most=True)
    fast, unknown = plan_timeouts(placement, _records(Link(1.0, 1.0)), training, codecs), \
        plan_timeouts(placement, _records(slow), training, codecs)
    assert unknown.transfer_s > 100 * fast.transfer_s and unknown.step_s > fast.step_s
    assert predicted_step_s(placement, _records(slow), training, codecs) > \
        predicted_step_s(placement, _records(Link(1.0, 1.0)), training, codecs)
