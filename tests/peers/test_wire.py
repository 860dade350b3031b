"""The data-plane frame format: what round-trips, and every way a frame is refused."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peers import wire
from peers.transport import Message

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
    ([msgpack.packb({"kind": "act"}), b""], "array of 7 fields"),
    ([_header(*GOOD[:6]), b""], "array of 7 fields"),
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


def test_control_bodies_are_type_checked():
    body = wire.pack_body({"address": "tcp://x:1", "timeout": 2.0})
    assert wire.unpack_body(body, {"address": str, "timeout": (int, float)})["timeout"] == 2.0
    with pytest.raises(wire.WireError, match="'timeout' has type str"):
        wire.unpack_body(wire.pack_body({"address": "a", "timeout": "2"}), {"timeout": (int, float)})
    with pytest.raises(wire.WireError, match="'chunk' has type bool"):
        wire.unpack_body(wire.pack_body({"chunk": True}), {"chunk": int})
    with pytest.raises(wire.WireError, match="must be a map"):
        wire.unpack_body(wire.pack_body([1, 2]), {})
    with pytest.raises(wire.WireError, match="not valid msgpack"):
        wire.unpack_body(b"\xc1", {})
