"""The step channel over real zmq sockets and real DHT keys: signed reports in, control pushed back."""
from __future__ import annotations

import queue

import pytest

from peers.dataplane import wire
from peers.dataplane.transport import BadMessage, Message
from peers.dataplane.zmq_transport import ZmqTransport
from peers.protocol import ControlRecord, PeerRecord, PlanRecord, owner_fingerprint
from peers.step_channel import control_payload, read_control, report_payload, verify_report

from .test_protocol import _plan


def _record(name: str = "p1", **fields) -> PeerRecord:
    return PeerRecord(name=name, address="tcp://127.0.0.1:7000", device="cpu", tflops=0.2, memory_gb=8.0, **fields)


def test_a_report_counts_only_when_the_key_its_name_is_bound_to_signed_it(nodes):
    first, second = nodes
    payload = report_payload(first, _record(prepared_step=7, prepared_version=3))
    message = Message(wire.STEP_REPORT, 0, 0, payload, sender="p1")
    record = verify_report(message, owner_fingerprint(first.owner))
    assert (record.prepared_step, record.prepared_version) == (7, 3)
    with pytest.raises(BadMessage, match="not signed by the DHT key its name is bound to"):
        verify_report(message, owner_fingerprint(second.owner))  # the name belongs to another key
    with pytest.raises(BadMessage, match="step report for 'p1'"):
        verify_report(Message(wire.STEP_REPORT, 0, 0, payload, sender="p2"), owner_fingerprint(first.owner))
    forged = wire.unpack_body(payload, wire.StepReportBody)
    tampered = wire.pack_body(wire.StepReportBody(record=forged.record.replace(b"\x07", b"\x08"), owner=forged.owner,
                                                  signature=forged.signature))
    with pytest.raises(BadMessage, match="not signed"):
        verify_report(Message(wire.STEP_REPORT, 0, 0, tampered, sender="p1"), owner_fingerprint(first.owner))
    with pytest.raises(BadMessage, match="malformed message from 'p1'"):
        verify_report(Message(wire.STEP_REPORT, 0, 0, b"\x93garbage", sender="p1"), owner_fingerprint(first.owner))


def test_the_coordinator_pushes_control_back_on_the_connection_the_peer_dialed():
    reports: queue.Queue[Message] = queue.Queue()
    pushed: queue.Queue[Message] = queue.Queue()
    with ZmqTransport("coordinator") as coordinator, ZmqTransport("p1") as peer, ZmqTransport("p2") as stranger:
        coordinator.reports.listen(lambda message: reports.put(message) or message.sender == "p1")
        assert not coordinator.push("p1", wire.STEP_CONTROL, b"")  # nobody reported yet: no route
        peer.connect("coordinator", coordinator.address, on_push=pushed.put)
        stranger.connect("coordinator", coordinator.address, on_push=pushed.put)
        peer.send("coordinator", Message(wire.STEP_REPORT, 0, 0, b"report"))
        stranger.send("coordinator", Message(wire.STEP_REPORT, 0, 0, b"refused"))
        assert {reports.get(timeout=5).sender, reports.get(timeout=5).sender} == {"p1", "p2"}
        control = ControlRecord(plan_version=2, committed_step=10, committed_version=2, total_steps=50)
        plan = PlanRecord.from_wire(_plan())
        assert coordinator.push("p1", wire.STEP_CONTROL, control_payload(control, plan))
        assert not coordinator.push("p2", wire.STEP_CONTROL, b"")  # its report was not taken: not routed
        message = pushed.get(timeout=5)
        assert message.sender == "coordinator" and read_control(message.payload) == (control, plan)
        coordinator.push("p1", "act", b"")  # only step_control is expected back on a two-way link
        coordinator.push("p1", wire.STEP_CONTROL, control_payload(control, None))
        assert read_control(pushed.get(timeout=5).payload) == (control, None)
        assert peer.stats()["rejected"]["malformed"] == 1
