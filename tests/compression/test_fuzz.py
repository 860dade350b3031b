"""Fuzzing `decode` (and AQ-SGD's frames): random bytes, mutated frames of every codec, and forged
frames whose header is valid but whose payload is arbitrary. The only exception allowed out is
CodecError; whatever decodes has the header's dtype and shape, within its codec's ratio cap.
`bench/fuzz.py` runs the same targets for 100,000 cases and reports peak memory."""
from __future__ import annotations

import functools
import random
import struct

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compression import ActivationDelta, CodecError, decode, describe, encode, resolve

CODECS = ["none", "fp16", "bf16", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q1@8", "q4@128", "q3~",
          "q8~@64", "q2@65536", "cocktail", "cocktail@3,0.5", "cocktail@1,1", "cocktail@8,0.00001",
          "cocktail@42,1"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SPECS = [*CODECS, "cocktail@64,0.000001", "q9", "zip", "Q4", "q4@7", "none@1", "q" * 48, "\xff\xfe"]
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.cache
def base_frames() -> list[bytes]:
    """Valid frames of every codec and dtype, empty, ragged and multi-dimensional."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(0,), (1,), (37,), (5, 61), (2, 3, 130), ()]
    return [encode((torch.randn(shape, generator=gen) * 3).to(dtype), codec, seed=i)
            for i, (codec, dtype, shape) in enumerate((c, d, s) for c in CODECS for d in DTYPES for s in shapes)
            if (i + len(codec)) % 3 == 0 or shape in [(37,), (5, 61)]]


def checked_decode(data: bytes, **kwargs: object) -> torch.Tensor | None:
    """decode, with every property a decoded tensor must have; None for a CodecError."""
    try:
        out = decode(data, **kwargs)
    except CodecError:
        return None
    info = describe(data)
    assert tuple(out.shape) == info.shape and out.dtype == info.dtype
    assert out.numel() * out.element_size() <= resolve(info.codec).max_ratio * len(data)
    return out


# One mutation: (kind, position as a fraction of the length, an integer argument, bytes).
MUTATION = st.tuples(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete", "dtype", "ndim",
                                      "speclen", "spec", "dim"]),
                     st.floats(0, 1), st.integers(0, 2**64 - 1), st.binary(max_size=24), st.sampled_from(SPECS))


def mutate(frame: bytes, mutations: list[tuple[str, float, int, bytes, str]]) -> bytes:
    data = bytearray(frame)
    for kind, where, number, blob, spec in mutations:
        at = int(where * max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[at] ^= 1 << (number % 8)
        elif kind == "set" and data:
            data[at] = number % 256
        elif kind == "truncate":
            del data[at:]
        elif kind == "extend":
            data += blob
        elif kind == "insert":
            data[at:at] = blob
        elif kind == "delete":
            del data[at:at + 1 + number % 64]
        elif kind in ("dtype", "ndim", "speclen") and len(data) >= 8:
            data[{"dtype": 5, "ndim": 6, "speclen": 7}[kind]] = number % 256 if number % 2 else number % 20
        elif kind == "spec" and len(data) >= 8:
            data = respec(data, spec)
        elif kind == "dim" and len(data) >= 8 and data[6]:
            offset = 8 + data[7] + 8 * (number % data[6])
            if offset + 8 <= len(data):
                value = [0, 1, number % 4096, number, 2**64 - 1][number % 5]
                struct.pack_into("<Q", data, offset, value)
    return bytes(data)


def respec(data: bytearray, spec: str) -> bytearray:
    """The same frame under another codec spec (header rebuilt, payload kept)."""
    old_len, ndim = data[7], data[6]
    body_at = 8 + old_len + 8 * ndim
    body_at += -body_at % 8
    if len(data) < body_at:
        return data
    shape = bytes(data[8 + old_len:8 + old_len + 8 * ndim])
    raw = spec.encode("latin-1")[:255]
    head = bytes(data[:7]) + bytes([len(raw)]) + raw + shape
    return bytearray(head + bytes(-len(head) % 8) + data[body_at:])


def finite_stats(rng: random.Random, payload: bytearray, at: int, blocks: int) -> None:
    """A block quantizer's exponent (in and out of range) and finite fp16 (offset, scale) pairs."""
    struct.pack_into("<i", payload, at, rng.randrange(-130, 131))
    for block in range(blocks):
        struct.pack_into("<ee", payload, at + 4 + 4 * block, rng.uniform(-4, 4), rng.uniform(0, 1))


def forge(codec: str, dtype_code: int, shape: tuple[int, ...], seed: int, structured: bool) -> bytes:
    """A frame whose header is exactly right for (codec, dtype, shape) and whose payload is random;
    `structured` makes a cocktail mask select exactly the kept count, so the values decode too."""
    impl, dtype = resolve(codec), DTYPES[dtype_code]
    numel = 1
    for size in shape:
        numel *= size
    rng = random.Random(seed)
    size = impl.payload_size(numel, dtype)
    payload = bytearray(rng.randbytes(size))
    if structured and codec.startswith("cocktail") and numel:
        sampled, kept = impl._counts(numel)
        struct.pack_into("<i", payload, 0, rng.randrange(min(impl.stride, numel)))
        mask_at = size - -(-sampled // 8)
        payload[mask_at:] = bytes(size - mask_at)
        for position in rng.sample(range(sampled), kept):
            payload[mask_at + position // 8] |= 1 << (position % 8)
        finite_stats(rng, payload, 4, -(-kept // 128))
    if structured and codec.startswith("q"):
        finite_stats(rng, payload, 0, -(-numel // impl.block))
    raw = impl.spec.encode()
    head = struct.pack("<4sBBBB", b"SWCF", 1, dtype_code, len(shape), len(raw)) + raw
    head += struct.pack(f"<{len(shape)}Q", *shape)
    return head + bytes(-len(head) % 8) + payload


@settings(FUZZ, max_examples=400)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_codec_error(data):
    checked_decode(data)


@settings(FUZZ, max_examples=400)
@given(dtype=st.integers(0, 3), ndim=st.integers(0, 17), spec=st.sampled_from(SPECS), rest=st.binary(max_size=400))
def test_random_bytes_behind_a_plausible_header_raise_only_codec_error(dtype, ndim, spec, rest):
    raw = spec.encode("latin-1")
    checked_decode(b"SWCF\x01" + bytes([dtype, ndim, len(raw)]) + raw + rest)


@settings(FUZZ, max_examples=1000)
@given(index=st.integers(0, 10**6), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_frames_of_every_codec_raise_only_codec_error(index, mutations):
    frames = base_frames()
    original = frames[index % len(frames)]
    data = mutate(original, mutations)
    info = describe(original)
    checked_decode(data)
    # a receiver that knows what to expect, decoding into its own buffer
    out = torch.empty(info.shape, dtype=info.dtype)
    checked_decode(data, codec=info.codec, shape=info.shape, out=out)


@settings(FUZZ, max_examples=600)
@given(codec=st.sampled_from(CODECS), dtype_code=st.integers(0, 2),
       shape=st.lists(st.integers(0, 40), max_size=3).map(tuple), seed=st.integers(0, 2**32), structured=st.booleans())
def test_forged_payloads_behind_valid_headers_raise_only_codec_error(codec, dtype_code, shape, seed, structured):
    checked_decode(forge(codec, dtype_code, shape, seed, structured))


@functools.cache
def delta_frames() -> list[tuple[list[int], bytes, str]]:
    """(ids, frame, codec): per codec a first-visit frame, then one of two deltas and two first visits."""
    gen = torch.Generator().manual_seed(1)
    cases = []
    for codec in ("q3", "cocktail", "none"):
        sender = ActivationDelta(codec)
        base = torch.randn(6, 4, 8, generator=gen)
        for ids in ([0, 1, 2], [0, 1, 3, 4]):  # the second frame: two deltas and two first visits
            cases.append((ids, sender.encode(ids, base[ids], seed=len(cases)), codec))
    return cases


@settings(FUZZ, max_examples=400)
@given(index=st.integers(0, 5), mutations=st.lists(MUTATION, max_size=3), expect=st.booleans())
def test_mutated_activation_delta_frames_raise_only_codec_error(index, mutations, expect):
    cases = delta_frames()
    receiver = ActivationDelta(cases[index][2])
    for ids, frame, _ in cases[index - index % 2:index + 1]:  # replay the sender's frames up to this one
        data = mutate(frame, mutations) if frame is cases[index][1] else frame
        try:
            out = receiver.decode(ids, data, shape=(len(ids), 4, 8) if expect else None)
        except CodecError:
            return
        assert out.shape[0] == len(ids) and (not expect or out.shape == (len(ids), 4, 8))
