"""The data-plane frame format and control bodies: what round-trips, and every way one is refused."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peers.dataplane import wire
from peers.dataplane.transport import Message
from tests.peers.test_fuzz_bodies import MSGPACK, MUTATION, mutate

int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _header(*fields: object) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


GOOD = [wire.WIRE_VERSION, "act", 3, 17, 2, "p1", [5, 6]]


@settings(max_examples=60, deadline=None)
@given(kind=st.text(min_size=1, max_size=64), step=int64, index=int64, version=st.integers(0, 2**31),
       sender=st.text(max_size=50), sample_ids=st.lists(int64, max_size=40), payload=st.binary(max_size=2000))
def test_pack_unpack_round_trips_every_field(kind, step, index, version, sender, sample_ids, payload):
    message = Message(kind, step, index, payload, sample_ids=tuple(sample_ids))
    got = wire.unpack(wire.pack(message, sender=sender, plan_version=version))
    assert (got.kind, got.step, got.index, got.sender, got.plan_version, got.sample_ids) == (
        kind, step, index, sender, version, tuple(sample_ids))
    assert bytes(got.payload) == payload


@settings(max_examples=60, deadline=None)
@given(kind=st.text(min_size=1, max_size=64), step=int64, version=st.integers(0, 2**63 - 1),
       sender=st.text(max_size=50), sample_ids=st.lists(int64, max_size=40))
def test_header_bytes_are_the_plain_msgpack_array(kind, step, version, sender, sample_ids):
    frames = wire.pack(Message(kind, step, 3, b"", sample_ids=tuple(sample_ids)), sender=sender, plan_version=version)
    assert frames[0] == _header(wire.WIRE_VERSION, kind, version, step, 3, sender, sample_ids)


def test_payload_is_neither_copied_on_send_nor_on_receive():
    payload = bytes(range(256)) * 4096
    frames = wire.pack(Message("act", 0, 0, payload), sender="a", plan_version=0)
    assert frames[1] is payload
    received = bytearray(payload)
    got = wire.unpack([frames[0], received])
    received[0] = 99  # the view reads the receive buffer itself
    assert got.payload[0] == 99 and got.payload.readonly


def test_writable_payload_is_detached_from_the_callers_buffer():
    buffer = bytearray(b"abcd")
    frames = wire.pack(Message("act", 0, 0, memoryview(buffer)), sender="a", plan_version=0)
    buffer[0] = ord("z")
    assert bytes(frames[1]) == b"abcd"
    assert wire.pack(Message("act", 0, 0, bytearray(b"ab")), sender="a", plan_version=0)[1] == b"ab"
    with pytest.raises(TypeError, match="payload must be bytes"):
        wire.pack(Message("act", 0, 0, "text"), sender="a", plan_version=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("frames, complaint", [
    ([_header(*GOOD)], "expected 2 frames"),
    ([_header(*GOOD), b"", b""], "expected 2 frames"),
    ([b"\xc1\x00\xff", b""], "not valid msgpack"),
    ([b"", b""], "not valid msgpack"),
    ([_header(*GOOD) + b"\x00", b""], "not valid msgpack"),
    ([msgpack.packb({"kind": "act"}), b""], "array of 7 or 8 fields"),
    ([_header(*GOOD[:6]), b""], "array of 7 or 8 fields"),
    ([_header(2, *GOOD[1:]), b""], "wire version"),
    ([_header(wire.WIRE_VERSION, 7, *GOOD[2:]), b""], "'kind' must be str"),
    ([_header(wire.WIRE_VERSION, "", *GOOD[2:]), b""], "'kind' must be 1..64"),
    ([_header(*GOOD[:2], True, *GOOD[3:]), b""], "'plan_version' must be int"),
    ([_header(*GOOD[:2], -1, *GOOD[3:]), b""], "'plan_version' must be >= 0"),
    ([_header(*GOOD[:3], 1.5, *GOOD[4:]), b""], "'step' must be int"),
    ([_header(*GOOD[:5], b"p1", GOOD[6]), b""], "'sender' must be str"),
    ([_header(*GOOD[:6], [1, "x"]), b""], "'sample_ids' must hold only"),
    ([_header(*GOOD[:6], {"a": 1}), b""], "must be list"),
    ([b"\x97\x01\xa3act", b""], "not valid msgpack"),
])
def test_malformed_frames_raise_wire_error_naming_the_problem(frames, complaint):
    with pytest.raises(wire.WireError, match=complaint):
        wire.unpack(frames)


def test_oversized_payload_and_header_are_refused():
    with pytest.raises(wire.WireError, match="exceeds max_message_bytes 10"):
        wire.unpack([_header(*GOOD), bytes(11)], max_message_bytes=10)
    huge = _header(*GOOD[:6], [2**20] * (wire.MAX_HEADER_BYTES // 4))  # 5 bytes per id
    with pytest.raises(wire.WireError, match="header of"):
        wire.unpack([huge, b""])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_random_bytes_never_escape_as_anything_but_wire_error(frames):
    try:
        message = wire.unpack(frames)
    except wire.WireError:
        return
    assert isinstance(message, Message)  # only if the bytes happened to be a valid frame


def _body(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


META = {"stage": 0, "serial": 1, "bytes": 10, "chunks": 1, "chunk_bytes": 1024, "sha256": "0" * 64}


def test_control_bodies_round_trip_and_tolerate_fields_they_do_not_know():
    request = wire.StateRequestBody(stage=2, chunk=5, serial=7)
    assert wire.unpack_body(wire.pack_body(request), wire.StateRequestBody) == request
    assert wire.unpack_body(_body(stage=2, chunk=-1), wire.StateRequestBody).serial is None
    reach = wire.unpack_body(_body(address="tcp://x:1", timeout=2, added_later=[1, 2]), wire.ReachRequestBody)
    assert reach == wire.ReachRequestBody(address="tcp://x:1", timeout=2.0)  # an int timeout reads as float


@pytest.mark.parametrize("data, body_type, complaint", [
    (_body(address="a", timeout="2"), wire.ReachRequestBody, r"got `str` - at `\$.timeout`"),
    (_body(address="a", timeout=-1.0), wire.ReachRequestBody, r">= 0.0 - at `\$.timeout`"),
    (_body(address="a" * 301, timeout=1.0), wire.ReachRequestBody, r"length <= 300 - at `\$.address`"),
    (_body(rtt="fast"), wire.ReachResultBody, r"at `\$.rtt`"),
    (_body(stage=0, chunk=True), wire.StateRequestBody, r"got `bool` - at `\$.chunk`"),
    (_body(stage=0, chunk=-2), wire.StateRequestBody, r">= -1 - at `\$.chunk`"),
    (_body(chunk=0), wire.StateRequestBody, "missing required field `stage`"),
    (_body(**{**META, "bytes": -1}), wire.StateMetaBody, r">= 0 - at `\$.bytes`"),
    (_body(**{**META, "chunk_bytes": wire.MAX_CHUNK_BYTES + 1}), wire.StateMetaBody, r"at `\$.chunk_bytes`"),
    (_body(**{**META, "sha256": "not a digest"}), wire.StateMetaBody, r"at `\$.sha256`"),
    (_body(error="x" * 5000), wire.StateErrorBody, r"length <= 4096 - at `\$.error`"),
    (msgpack.packb([1, 2]), wire.StateRequestBody, "got `array`"),
    (b"\xc1", wire.StateErrorBody, "not valid msgpack"),
    (b"\x81\xa5error\xa1\xff", wire.StateErrorBody, "not valid msgpack"),  # invalid UTF-8
])
def test_malformed_control_bodies_raise_wire_error_naming_the_field(data, body_type, complaint):
    with pytest.raises(wire.WireError, match=complaint):
        wire.unpack_body(data, body_type)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_body_bytes_never_escape_as_anything_but_wire_error(data):
    for body_type in (wire.ReachRequestBody, wire.ReachResultBody, wire.StateRequestBody, wire.StateMetaBody,
                      wire.StateErrorBody):
        try:
            wire.unpack_body(data, body_type)
        except wire.WireError:
            pass


# Fuzzing: mutated and random headers raise only WireError (bench/fuzz.py runs 100,000 such cases).

def _only_wire_error(frames, **kwargs) -> None:
    try:
        message = wire.unpack(frames, **kwargs)
    except wire.WireError:
        return
    assert isinstance(message, Message) and isinstance(message.payload, memoryview)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.text(min_size=1, max_size=8), step=int64, sender=st.text(max_size=8),
       sample_ids=st.lists(int64, max_size=6), mutations=st.lists(MUTATION, min_size=1, max_size=4),
       payload=st.binary(max_size=32), limit=st.sampled_from([0, 16, wire.DEFAULT_MAX_MESSAGE_BYTES]))
def test_mutated_headers_raise_only_wire_error(kind, step, sender, sample_ids, mutations, payload, limit):
    header, _ = wire.pack(Message(kind, step, 1, b"", sample_ids=tuple(sample_ids)), sender=sender, plan_version=2)
    _only_wire_error([mutate(bytes(header), mutations), payload], max_message_bytes=limit)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replacements=st.lists(st.tuples(st.integers(0, 8), MSGPACK), max_size=3), length=st.integers(0, 9))
def test_headers_with_random_field_values_raise_only_wire_error(replacements, length):
    fields = (GOOD + [0, "extra"])[:length]
    for index, value in replacements:
        if index < length:
            fields[index] = value
    _only_wire_error([msgpack.packb(fields, use_bin_type=True), b""])


@settings(max_examples=200, deadline=None)
@given(st.lists(MSGPACK, max_size=3))
def test_random_msgpack_frames_raise_only_wire_error(values):
    _only_wire_error([msgpack.packb(value, use_bin_type=True) for value in values])
