"""The frame format: self-describing round trips, and every malformed input is a CodecError."""
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compression
from compression import CodecError, decode, describe, encode

CODECS = ["none", "fp16", "bf16", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q4@128", "q3~",
          "q6~@64", "cocktail", "cocktail@3,0.5"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def test_available_lists_every_contract_codec():
    assert set(compression.available()) >= {"none", "fp16", "bf16", "cocktail"} | {f"q{k}" for k in range(1, 9)}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (7,), (300,), (5, 61), (2, 3, 4, 5)])
def test_round_trip_keeps_dtype_and_shape(codec, dtype, shape):
    x = torch.randn(shape).to(dtype)
    y = decode(encode(x, codec, seed=1))
    assert y.dtype == dtype and y.shape == x.shape
    if codec == "none":
        assert torch.equal(x, y)


def test_frame_header_describes_the_tensor():
    frame = encode(torch.randn(4, 5, dtype=torch.bfloat16), "q4@128~")
    info = describe(frame)
    assert (info.codec, info.dtype, info.shape) == ("q4~@128", torch.bfloat16, (4, 5))
    assert frame[:4] == b"SWCF"


def test_decode_accepts_memoryview_and_bytearray_slices():
    x = torch.randn(100)
    frame = encode(x, "fp16")
    padded = bytearray(b"xx" + frame)
    assert torch.equal(decode(memoryview(padded)[2:]), decode(frame))
    assert torch.equal(decode(bytearray(frame)), decode(frame))


def test_decode_into_out_reuses_the_buffer():
    x = torch.randn(10, 300)
    out = torch.empty_like(x)
    for codec in ["none", "q4", "q3@64", "cocktail"]:
        frame = encode(x, codec, seed=2)
        assert decode(frame, out=out) is out
        assert torch.equal(out, decode(frame))
    with pytest.raises(CodecError, match="out"):
        decode(encode(x, "q4"), out=torch.empty(10, 301))


def test_same_seed_same_bytes_generator_reproducible():
    x = torch.randn(1000)
    assert encode(x, "q3", seed=5) == encode(x, "q3", seed=5)
    assert encode(x, "q3", seed=5) != encode(x, "q3", seed=6)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert encode(x, "q3", generator=g1) == encode(x, "q3", generator=g2)


@pytest.mark.parametrize("bad", ["zip", "q9", "q0", "q4@7", "q4@0", "q4@999999", "q4~~", "q4@128@128",
                                 "fp16@2", "Q4", "", "cocktail@0,0.5", "cocktail@4,1.5", "q" * 60])
def test_unknown_or_malformed_codec_is_rejected(bad):
    with pytest.raises(CodecError):
        encode(torch.randn(10), bad)


def test_non_string_codecs_are_rejected():
    for bad in [4, ["q4"], None]:
        with pytest.raises(CodecError, match="string"):
            encode(torch.randn(10), bad)


@pytest.mark.parametrize("tensor", [torch.arange(5), torch.ones(3, dtype=torch.float64),
                                    torch.ones(2, dtype=torch.bool), [1.0, 2.0]])
def test_unsupported_input_is_rejected(tensor):
    with pytest.raises(CodecError):
        encode(tensor, "q4")


@pytest.mark.parametrize("codec", ["none", "fp16", "bf16", "q4", "q8~", "cocktail@1,1"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_rejected(codec, value):
    x = torch.randn(1000)
    x[17] = value
    with pytest.raises(CodecError, match="NaN or inf"):
        encode(x, codec)


def test_values_beyond_fp16_range_are_rejected_by_fp16_but_carried_by_bf16_and_q4():
    with pytest.raises(CodecError, match="too large"):
        encode(torch.tensor([1e6, 2.0]), "fp16")
    assert decode(encode(torch.tensor([1e6, 2.0]), "bf16"))[0] > 9e5
    # q4's block stats travel scaled by the frame's power-of-two exponent, so fp16 never overflows
    assert abs(float(decode(encode(torch.tensor([1e6, 2.0]), "q4"))[0]) - 1e6) <= 1e6 / 15


def _frame(shape=(4, 5), codec="q4"):
    return encode(torch.randn(shape), codec, seed=0)


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f[:6], "shorter than"),
    (lambda f: b"XXXX" + f[4:], "magic"),
    (lambda f: f[:4] + bytes([2]) + f[5:], "version"),
    (lambda f: f[:5] + bytes([9]) + f[6:], "dtype"),
    (lambda f: f[:-1], "payload"),
    (lambda f: f + b"\0", "payload"),
    (lambda f: f[:8] + b"q9" + f[10:], "unknown codec"),
    (lambda f: f[:10] + struct.pack("<Q", 5) + f[18:], "payload"),  # shape starts after "q4"
])
def test_malformed_frames_raise_codec_error(mutate, message):
    with pytest.raises(CodecError, match=message):
        decode(mutate(_frame()))


def test_absurd_shape_in_a_small_frame_never_allocates():
    frame = bytearray(_frame(shape=(4, 5)))
    struct.pack_into("<QQ", frame, 10, 1 << 30, 1 << 30)  # claims 2**60 values in a 64-byte frame
    with pytest.raises(CodecError):
        decode(bytes(frame))
    struct.pack_into("<QQ", frame, 10, 1 << 24, 1 << 10)  # 16G values: payload check, no allocation
    with pytest.raises(CodecError, match="payload"):
        decode(bytes(frame) + bytes(65536))


def test_decode_rejects_non_buffers():
    for bad in [None, 3, "frame", [1, 2]]:
        with pytest.raises(CodecError):
            decode(bad)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(0, 40), max_size=4), dtype=st.sampled_from(DTYPES),
       codec=st.sampled_from(CODECS), seed=st.integers(0, 2**63 - 1))
def test_property_round_trip_any_shape(shape, dtype, codec, seed):
    x = (torch.randn(shape) * 3).to(dtype)
    frame = encode(x, codec, seed=seed)
    y = decode(frame)
    assert y.shape == x.shape and y.dtype == dtype
    assert describe(frame).shape == tuple(shape)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codec=st.sampled_from(CODECS), data=st.data())
def test_property_mutated_frames_raise_codec_error_or_decode(codec, data):
    frame = bytearray(encode(torch.randn(data.draw(st.integers(0, 300))), codec, seed=1))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
        if kind == "flip" and frame:
            frame[data.draw(st.integers(0, len(frame) - 1))] ^= data.draw(st.integers(1, 255))
        elif kind == "truncate":
            del frame[data.draw(st.integers(0, len(frame))):]
        else:
            frame += data.draw(st.binary(min_size=1, max_size=16))
    try:
        y = decode(bytes(frame))
    except CodecError:
        return
    assert tuple(y.shape) == describe(bytes(frame)).shape


def test_concurrent_encodes_from_threads_match_sequential_ones():
    from concurrent.futures import ThreadPoolExecutor

    tensors = [torch.randn(5000 + 7 * i) for i in range(8)]
    expected = [encode(t, "q3", seed=i) for i, t in enumerate(tensors)]
    with ThreadPoolExecutor(4) as pool:
        frames = list(pool.map(lambda it: encode(it[1], "q3", seed=it[0]), enumerate(tensors)))
    assert frames == expected
