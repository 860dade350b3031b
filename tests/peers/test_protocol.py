"""The control-plane protocol: record round trips, validation that names the field, timeouts."""
from __future__ import annotations

import pytest
import torch

from peers.daemon.stage_state import pack_state, unpack_state
from peers.daemon.timeouts import HEARTBEAT_S, PEER_TTL_S, Timeouts, derive_timeouts
from peers.protocol import ControlRecord, PeerRecord, PlanRecord, RecordError, peer_subkey, subkey_name, subkey_owner

OWNER = b"[owner:ssh-rsa AAAAB3Nza]"


def _plan(**changes):
    wire = {"version": 2, "start_step": 11, "grid": [["a", "b"], ["c", "d"]], "layers": [2, 2],
            "addresses": {n: f"tcp://127.0.0.1:{7000 + i}" for i, n in enumerate("abcd")},
            "sources": dict.fromkeys("abcd", "keep"), "codecs": {"fwd": "q3", "bwd": "q6", "grad": "q4"},
            "hyper": {"model": "tiny"}, "standby": ["e"], "reason": "because"}
    wire.update(changes)
    return wire


def test_peer_record_round_trips_through_the_wire():
    record = PeerRecord(name="p1", address="tcp://127.0.0.1:7000", device="cpu", tflops=0.2, memory_gb=8.0,
                        state="training", links={"p2": {"bandwidth_gbps": 1.0, "latency_ms": 0.2}}, step=7,
                        bytes_sent={"forward": 10}, loss=3.5)
    assert PeerRecord.from_wire(record.to_wire()) == record


@pytest.mark.parametrize("field, value, message", [
    ("name", 5, "'name' must be str"),
    ("tflops", "fast", "'tflops' must be float"),
    ("step", True, "'step' must be int, got a bool"),
    ("state", "dancing", "'state' must be one of"),
    ("links", [1], "'links' must be a dict"),
    ("links", {"p2": {"bandwidth_gbps": "fast", "latency_ms": 1}}, "'links' must map names"),
    ("links", {"p2": {"bandwidth_gbps": 0, "latency_ms": 1}}, "'links' must map names"),
    ("links", {"p2": {"bandwidth_gbps": 1.0, "latency_ms": float("nan")}}, "'links' must map names"),
    ("tflops", 0.0, "'tflops' must be a positive number"),
    ("tflops", float("inf"), "'tflops' must be a positive number"),
    ("memory_gb", -1.0, "'memory_gb' must be a non-negative number"),
    ("heartbeat", float("nan"), "'heartbeat' must be a finite number"),
    ("bytes_sent", {"forward": 1.5}, "'bytes_sent' must map channel names to integers"),
    ("dht_addrs", [3], "'dht_addrs' must be a list of multiaddr strings"),
])
def test_peer_record_rejects_mistyped_fields_by_name(field, value, message):
    wire = PeerRecord(name="p1", address="tcp://x:1", device="cpu", tflops=1.0, memory_gb=1.0).to_wire()
    wire[field] = value
    with pytest.raises(RecordError, match=message):
        PeerRecord.from_wire(wire)


def test_missing_required_field_and_non_mapping_are_errors():
    with pytest.raises(RecordError, match="lacks field 'address'"):
        PeerRecord.from_wire({"name": "p1", "device": "cpu", "tflops": 1.0, "memory_gb": 1.0})
    with pytest.raises(RecordError, match="must be a mapping"):
        ControlRecord.from_wire([1, 2])


def test_plan_record_round_trip_and_positions():
    plan = PlanRecord.from_wire(_plan())
    assert PlanRecord.from_wire(plan.to_wire()) == plan
    assert (plan.stages, plan.replicas) == (2, 2)
    assert plan.position("d") == (1, 1) and plan.position("e") is None
    assert plan.members() == ["a", "b", "c", "d"]


@pytest.mark.parametrize("changes, message", [
    ({"grid": [["a", "b"], ["c"]]}, "rectangle"),
    ({"grid": [["a", "b"], ["c", "a"]]}, "names a peer twice"),
    ({"layers": [4]}, "'layers' has 1 entries for 2 stages"),
    ({"layers": [0, 4]}, "positive layer counts"),
    ({"sources": {"a": "keep"}}, "lack grid peers"),
    ({"codecs": {"fwd": "q3"}}, "'codecs' must name exactly"),
    ({"version": 0}, "must be positive"),
])
def test_plan_record_validation_names_the_problem(changes, message):
    with pytest.raises(RecordError, match=message):
        PlanRecord.from_wire(_plan(**changes))


def test_subkeys_carry_the_name_and_the_signing_owner():
    subkey = peer_subkey("p1", OWNER)
    assert subkey_name(subkey) == "p1" and subkey_owner(subkey) == OWNER
    with pytest.raises(RecordError, match="no owner marker"):
        subkey_name(b"p1")
    with pytest.raises(RecordError, match="invalid node name"):
        peer_subkey("evil[owner:x]", OWNER)


def test_timeouts_form_a_hierarchy_from_link_speed():
    fast = derive_timeouts(message_bytes=1e6, bandwidth_gbps=10.0, latency_ms=1.0, step_flops=1e9, tflops=1.0,
                           stages=2, micro_batches=2)
    assert fast.heartbeat_s == HEARTBEAT_S < fast.peer_ttl_s == PEER_TTL_S
    assert fast.message_s < fast.commit_s and fast.transfer_s < fast.step_s
    slow = derive_timeouts(message_bytes=1e9, bandwidth_gbps=0.1, latency_ms=200.0, step_flops=1e9, tflops=1.0,
                           stages=2, micro_batches=2)
    assert slow.transfer_s == pytest.approx(0.2 + 80.0)
    assert slow.message_s == pytest.approx(3 * slow.step_s) and slow.message_s > fast.message_s
    assert Timeouts.from_wire(slow.to_wire()) == slow
    with pytest.raises(ValueError, match="positive"):
        derive_timeouts(message_bytes=1, bandwidth_gbps=0, latency_ms=1, step_flops=1, tflops=1, stages=1,
                        micro_batches=1)


def test_stage_state_blob_round_trip_and_garbage():
    state = {"model": {"w": torch.arange(4.0)}, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    loaded = unpack_state(pack_state(1, [2, 2], 9, state))
    assert (loaded.stage, loaded.layers, loaded.step) == (1, [2, 2], 9)
    assert torch.equal(loaded.state["model"]["w"], state["model"]["w"])
    with pytest.raises(ValueError, match="not a stage state blob"):
        unpack_state(b"garbage")
