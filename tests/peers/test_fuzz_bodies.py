"""Fuzzing the control bodies: `unpack_body` with each body type, on random bytes, random msgpack
values, maps of the body's own fields holding random values, and mutated valid bodies. The only
exception allowed out is WireError (`bench/fuzz.py` runs the same targets for 100,000 cases)."""
from __future__ import annotations

import msgpack
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peers.dataplane import wire

BODY_TYPES = (wire.ReachRequestBody, wire.ReachResultBody, wire.StateRequestBody, wire.StateMetaBody,
              wire.StateErrorBody)
VALID_BODIES = [
    wire.ReachRequestBody(address="tcp://10.0.0.1:5555", timeout=2.5),
    wire.ReachResultBody(rtt=0.01), wire.ReachResultBody(busy=True),
    wire.StateRequestBody(stage=1, chunk=-1), wire.StateRequestBody(stage=0, chunk=3, serial=9),
    wire.StateMetaBody(stage=2, serial=1, bytes=10, chunks=1, chunk_bytes=1024, sha256="ab" * 32),
    wire.StateErrorBody(error="stage 3 is not served here", retry=True),
]
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Anything msgpack can carry, nested a little.
MSGPACK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=16)
    | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=16)

# One byte-level mutation: (kind, position as a fraction of the length, an integer, bytes).
MUTATION = st.tuples(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]), st.floats(0, 1),
                     st.integers(0, 2**32), st.binary(max_size=16))


def mutate(data: bytes, mutations: list[tuple[str, float, int, bytes]]) -> bytes:
    """`data` with each mutation applied in turn (bit flips, byte edits, cuts, insertions)."""
    out = bytearray(data)
    for kind, where, number, blob in mutations:
        at = int(where * max(len(out) - 1, 0))
        if kind == "flip" and out:
            out[at] ^= 1 << (number % 8)
        elif kind == "set" and out:
            out[at] = number % 256
        elif kind == "truncate":
            del out[at:]
        elif kind == "extend":
            out += blob
        elif kind == "insert":
            out[at:at + (number % 2)] = blob  # insert, or overwrite one byte
        elif kind == "delete":
            del out[at:at + 1 + number % 16]
    return bytes(out)


def only_wire_error(data: bytes) -> None:
    for body_type in BODY_TYPES:
        try:
            body = wire.unpack_body(data, body_type)
        except wire.WireError:
            continue
        assert isinstance(body, body_type)


@settings(FUZZ, max_examples=300)
@given(MSGPACK)
def test_random_msgpack_values_raise_only_wire_error(value):
    only_wire_error(msgpack.packb(value, use_bin_type=True))


@settings(FUZZ, max_examples=400)
@given(body_type=st.sampled_from(BODY_TYPES), data=st.data())
def test_bodies_with_their_own_fields_holding_random_values_raise_only_wire_error(body_type, data):
    names = [*body_type.__struct_fields__, "unknown"]
    valid = msgspec.to_builtins(next(b for b in VALID_BODIES if isinstance(b, body_type)))
    fields = {**valid, **data.draw(st.dictionaries(st.sampled_from(names), MSGPACK, max_size=len(names)))}
    for name in data.draw(st.lists(st.sampled_from(names), max_size=2)):
        fields.pop(name, None)
    only_wire_error(msgpack.packb(fields, use_bin_type=True))


@settings(FUZZ, max_examples=500)
@given(body=st.sampled_from(VALID_BODIES), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_valid_bodies_raise_only_wire_error(body, mutations):
    only_wire_error(mutate(wire.pack_body(body), mutations))


@settings(FUZZ, max_examples=200)
@given(st.binary(min_size=64, max_size=1024))
def test_longer_random_bytes_raise_only_wire_error(data):
    only_wire_error(data)


def test_deeply_nested_values_raise_wire_error():
    only_wire_error(b"\x81\xa1x" + b"\x91" * 1000 + b"\xc0")  # {"x": [[[... None ...]]]}, 1 KB
