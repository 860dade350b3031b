"""The control-plane protocol: record round trips, validation that names the field, timeouts."""
from __future__ import annotations

import pytest
import torch

from peers.daemon.stage_state import pack_state, unpack_state
from peers.daemon.timeouts import HEARTBEAT_S, PEER_TTL_S, derive_timeouts, first_step_allowance_s, loading_s
from peers.protocol import (
    ControlRecord,
    Link,
    PeerRecord,
    PlanRecord,
    RecordError,
    SourceKind,
    StateSource,
    Timeouts,
    TrainingSpec,
    from_builtins,
    peer_subkey,
    subkey_name,
    subkey_owner,
    to_builtins,
)

OWNER = b"[owner:ssh-rsa AAAAB3Nza]"


TIMEOUTS = {"transfer_s": 0.1, "step_s": 1.0, "message_s": 10.0, "heartbeat_s": 2.0, "peer_ttl_s": 10.0,
            "commit_s": 60.0}


def _plan(**changes):
    wire = {"version": 2, "start_step": 11, "grid": [["a", "b"], ["c", "d"]], "layers": [2, 2],
            "addresses": {n: f"tcp://127.0.0.1:{7000 + i}" for i, n in enumerate("abcd")},
            "sources": dict.fromkeys("abcd", {"kind": "keep"}),
            "codecs": {"forward": "q3", "backward": "q6", "gradient": "q4"},
            "training": {"model": "tiny", "batch": 4, "micro_batches": 2, "timeouts": TIMEOUTS},
            "standby": ["e"], "reason": {"change": "first", "text": "because"}}
    wire.update(changes)
    return wire


def test_peer_record_round_trips_through_the_wire():
    record = PeerRecord(name="p1", address="tcp://127.0.0.1:7000", device="cpu", tflops=0.2, memory_gb=8.0,
                        state="training", links={"p2": Link(bandwidth_gbps=1.0, latency_ms=0.2)}, step=7,
                        bytes_sent={"forward": 10}, loss=3.5)
    assert PeerRecord.from_wire(record.to_wire()) == record


@pytest.mark.parametrize("field, value, message", [
    ("name", 5, r"Expected `str`, got `int` - at `\$.name`"),
    ("tflops", "fast", r"Expected `float`, got `str` - at `\$.tflops`"),
    ("step", True, r"Expected `int`, got `bool` - at `\$.step`"),
    ("state", "dancing", r"Invalid enum value 'dancing' - at `\$.state`"),
    ("links", [1], r"Expected `object`, got `array` - at `\$.links`"),
    ("links", {"p2": {"bandwidth_gbps": "fast", "latency_ms": 1}}, r"got `str` - at `\$.links.p2.bandwidth_gbps`"),
    ("links", {"p2": {"bandwidth_gbps": 0, "latency_ms": 1}}, r"> 0.0, got 0 - at `\$.links.p2.bandwidth_gbps`"),
    ("links", {"p2": {"bandwidth_gbps": 1.0, "latency_ms": float("nan")}}, r"got nan - at `\$.links.p2.latency_ms`"),
    ("tflops", 0.0, r"Expected `float` > 0.0, got 0.0 - at `\$.tflops`"),
    ("tflops", float("inf"), r"Expected `float` <= 1e\+30, got inf - at `\$.tflops`"),
    ("memory_gb", -1.0, r"Expected `float` >= 0.0, got -1.0 - at `\$.memory_gb`"),
    ("heartbeat", float("nan"), r"at `\$.heartbeat`"),
    ("bytes_sent", {"forward": 1.5}, r"Expected `int`, got `float` - at `\$.bytes_sent.forward`"),
    ("bytes_sent", {"sideways": 1}, "name unknown channels"),
    ("dht_addrs", [3], r"Expected `str`, got `int` - at `\$.dht_addrs\[0\]`"),
])
def test_peer_record_rejects_mistyped_fields_by_name(field, value, message):
    wire = PeerRecord(name="p1", address="tcp://x:1", device="cpu", tflops=1.0, memory_gb=1.0).to_wire()
    wire[field] = value
    with pytest.raises(RecordError, match=message):
        PeerRecord.from_wire(wire)


def test_missing_required_field_and_non_mapping_are_errors():
    with pytest.raises(RecordError, match="peer record: Object missing required field `address`"):
        PeerRecord.from_wire({"name": "p1", "device": "cpu", "tflops": 1.0, "memory_gb": 1.0})
    with pytest.raises(RecordError, match="control record: Expected `object`, got `array`"):
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
    ({"layers": [0, 4]}, r"Expected `int` >= 1, got 0 - at `\$.layers\[0\]`"),
    ({"sources": {"a": {"kind": "keep"}}}, "lack grid peers"),
    ({"sources": {**dict.fromkeys("abc", {"kind": "keep"}), "d": {"kind": "peer", "donor": "e"}}},
     r"lacks the donors \['e'\] its sources name"),  # a standby donor must be reachable too
    ({"sources": dict.fromkeys("abcd", {"kind": "peer"})}, "'donor' must name a peer exactly when kind is 'peer'"),
    ({"codecs": {"fwd": "q3"}}, r"Object contains unknown field `fwd` - at `\$.codecs`"),
    ({"version": 0}, r"Expected `int` >= 1, got 0 - at `\$.version`"),
    ({"training": {"model": "tiny"}}, "'training.timeouts' is required"),
    ({"training": {"model": "tiny", "batch": 6, "micro_batches": 2, "timeouts": TIMEOUTS}}, "must split evenly"),
    ({"training": {"model": "huge", "timeouts": TIMEOUTS}}, "unknown preset 'huge'"),
    ({"reason": {"change": "whim", "text": ""}}, r"Invalid enum value 'whim' - at `\$.reason.change`"),
])
def test_plan_record_validation_names_the_problem(changes, message):
    with pytest.raises(RecordError, match=message):
        PlanRecord.from_wire(_plan(**changes))


def test_typed_values_survive_the_wire():
    plan = PlanRecord.from_wire(_plan(sources={**dict.fromkeys("abc", {"kind": "keep"}),
                                               "d": {"kind": "peer", "donor": "c"}}))
    assert plan.sources["d"] == StateSource(SourceKind.PEER, "c") and str(plan.sources["d"]) == "peer c"
    assert plan.training == TrainingSpec(batch=4, micro_batches=2, timeouts=Timeouts(**TIMEOUTS))


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
    assert from_builtins(to_builtins(slow), Timeouts, "timeouts") == slow
    with pytest.raises(ValueError, match="positive"):
        derive_timeouts(message_bytes=1, bandwidth_gbps=0, latency_ms=1, step_flops=1, tflops=1, stages=1,
                        micro_batches=1)


def test_a_state_transfer_gets_the_time_its_bytes_take_on_the_slowest_link():
    """A `small` stage's ~1.2 GB of state at 10 Mbit/s takes about 1,000 s: it gets that, not one message's time."""
    state_bytes = 12 * 100e6
    slow = derive_timeouts(message_bytes=1e6, bandwidth_gbps=0.01, latency_ms=50.0, step_flops=1e9, tflops=1.0,
                           stages=2, micro_batches=2, state_bytes=state_bytes)
    assert slow.state_s == pytest.approx(slow.message_s + 2 * (0.05 + state_bytes * 8 / 1e7))
    assert slow.state_s > 1900 > slow.message_s


def test_a_plan_whose_members_load_state_gives_its_first_waits_the_loading_time():
    """The neighbours of a member fetching a `small` stage over 10 Mbit/s wait out its transfer in their
    first step, and so does the coordinator; a plan of keepers and fresh starts adds nothing."""
    timeouts = derive_timeouts(message_bytes=1e6, bandwidth_gbps=0.01, latency_ms=50.0, step_flops=1e9, tflops=1.0,
                               stages=2, micro_batches=2, state_bytes=12 * 100e6)
    assert loading_s(timeouts) == timeouts.state_s + 3 * timeouts.message_s
    staying = {"a": StateSource(SourceKind.KEEP), "b": StateSource(SourceKind.INIT)}
    assert first_step_allowance_s(timeouts, staying) == 0.0
    for kind, donor in ((SourceKind.PEER, "a"), (SourceKind.CHECKPOINT, ""), (SourceKind.LAYERS, "")):
        sources = {**staying, "c": StateSource(kind, donor)}
        assert first_step_allowance_s(timeouts, sources) == loading_s(timeouts) > 1900


def test_a_stage_loading_from_a_peer_has_its_keepers_as_fallback_donors():
    plan = PlanRecord.from_wire(_plan(grid=[["a", "b", "e"], ["c", "d", "f"]], layers=[2, 2],
                                      addresses={n: f"tcp://127.0.0.1:{7000 + i}" for i, n in enumerate("abcdef")},
                                      sources={**dict.fromkeys("acdef", {"kind": "keep"}),
                                               "b": {"kind": "peer", "donor": "e"}}, standby=[],
                                      training={"model": "tiny", "batch": 6, "micro_batches": 2,
                                                "timeouts": TIMEOUTS}))
    assert plan.donors_of(0) == ["e", "a"]  # the named donor first
    assert plan.donors_of(1) == []  # nobody in stage 1 loads from a peer
    assert plan.donates("a") and plan.donates("e") and not plan.donates("c")


def test_stage_state_blob_round_trip_and_garbage():
    state = {"model": {"w": torch.arange(4.0)}, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    loaded = unpack_state(pack_state(1, [2, 2], 9, state))
    assert (loaded.stage, loaded.layers, loaded.step) == (1, [2, 2], 9)
    assert torch.equal(loaded.state["model"]["w"], state["model"]["w"])
    with pytest.raises(ValueError, match="not a stage state blob"):
        unpack_state(b"garbage")
