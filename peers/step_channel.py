"""The step channel: per-step coordination over the data plane instead of the DHT.

The DHT stays the place for discovery, liveness and the authoritative plan and control records,
but a DHT round trip (tens of ms, plus a poll interval) per step and per peer is more than a small
model's whole step. So each step travels over zmq:

    peer                                              coordinator
    connect(COORDINATOR, probe_address, on_push=...)  (its data port, from the signed control record)
    step_report(record signed by the DHT key)  ---->  route the name to this connection, verify,
                                                      wake the coordinator's loop
                                               <----  step_control(control record [, new plan])
                                                      pushed to every routed peer on each decision

A report is taken only when the DHT key its name is bound to signed it (`verify_report`), so a
forged one cannot commit a step for a peer that has not prepared it, curve or not. A push arrives
on the connection the peer dialed to the address the coordinator's signed record gives, so it
cannot be forged without the network path; the peer reads it exactly as it reads the records from
the DHT, and keeps whichever copy is newer (`peers.daemon.control_feed`).
"""
from __future__ import annotations

import msgspec

from peers.dataplane import wire
from peers.dataplane.transport import BadMessage, Message
from peers.dht import SwarmDHT, verify_signed
from peers.protocol import ControlRecord, PeerRecord, PlanRecord, RecordError, owner_fingerprint

__all__ = ["report_payload", "verify_report", "control_payload", "read_control"]

_ENCODER = msgspec.msgpack.Encoder()


def report_payload(dht: SwarmDHT, record: PeerRecord) -> bytes:
    """A step_report body: `record`, signed by this peer's DHT key."""
    data = _ENCODER.encode(record.to_wire())
    return wire.pack_body(wire.StepReportBody(record=data, owner=dht.owner, signature=dht.sign(data)))


def verify_report(message: Message, bound_owner: str) -> PeerRecord:
    """The record a step_report carries, if the key `bound_owner` (an `owner_fingerprint`) signed it
    and it names its sender; BadMessage (malformed) naming the sender otherwise."""
    try:
        body = wire.unpack_body(message.payload, wire.StepReportBody)
    except wire.WireError as error:
        raise BadMessage(message.sender, "malformed", str(error)) from None
    if owner_fingerprint(body.owner) != bound_owner or not verify_signed(body.owner, body.record, body.signature):
        raise BadMessage(message.sender, "malformed", "step report not signed by the DHT key its name is bound to")
    try:
        record = PeerRecord.from_wire(msgspec.msgpack.decode(body.record))
    except (RecordError, msgspec.DecodeError) as error:
        raise BadMessage(message.sender, "malformed", f"step report: {error}") from None
    if record.name != message.sender:
        raise BadMessage(message.sender, "malformed", f"step report for {record.name!r}")
    return record


def control_payload(control: ControlRecord, plan: PlanRecord | None) -> bytes:
    """A step_control body: `control`, and `plan` when the receiver has not been sent it yet."""
    return wire.pack_body(wire.StepControlBody(control=_ENCODER.encode(control.to_wire()),
                                               plan=_ENCODER.encode(plan.to_wire()) if plan is not None else b""))


def read_control(payload: bytes | memoryview) -> tuple[ControlRecord, PlanRecord | None]:
    """The control record (and plan) a step_control body carries; ValueError saying what is wrong."""
    body = wire.unpack_body(payload, wire.StepControlBody)
    try:
        control = ControlRecord.from_wire(msgspec.msgpack.decode(body.control))
        plan = PlanRecord.from_wire(msgspec.msgpack.decode(body.plan)) if body.plan else None
    except msgspec.DecodeError as error:
        raise ValueError(f"step control body: {error}") from None
    return control, plan
