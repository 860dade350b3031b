"""frame_size and bits_per_value: exact wire sizes without encoding, and one error for bad codecs."""
import pytest
import torch

import compression
from compression import CodecError, bits_per_value, encode, frame_size, resolve

CODECS = ["none", "fp16", "bf16", *(f"q{k}" for k in range(1, 9)), "q4@128", "q3~", "cocktail"]
SHAPES = [(), (0,), (2, 0, 3), (1,), (7,), (257,), (1000,), (3, 5), (33, 31), (1,) * 15 + (3,)]
MALFORMED = ["q9", "q0", "nope", "Q4", "", "q4@7", "q4@", "q4~~", "q4@128@128", "none@1", "fp16~",
             "cocktail@0,0.5", "cocktail@10", "x" * 60]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_frame_size_is_the_length_of_the_encoded_frame(codec, dtype):
    for shape in SHAPES:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))).to(dtype)
        assert frame_size(codec, shape, dtype) == len(encode(x, codec, seed=1)), shape


@pytest.mark.parametrize("codec", ["q3", "cocktail", "none"])
def test_an_int_shape_is_a_flat_tensor(codec):
    assert frame_size(codec, 1001) == frame_size(codec, (1001,)) == len(encode(torch.randn(1001), codec, seed=0))


@pytest.mark.parametrize("bits", [3, 4, 6])
def test_quantizers_cost_k_bits_plus_their_scales(bits):
    assert bits <= bits_per_value(f"q{bits}", numel=1_000_000) <= bits + 0.2


def test_cocktail_costs_a_fraction_of_a_bit():
    assert bits_per_value("cocktail", numel=1_000_000) < 0.3


@pytest.mark.parametrize("codec", [*MALFORMED, 4, None, b"q4"])
def test_bad_codecs_raise_codec_error_everywhere(codec):
    with pytest.raises(CodecError):
        resolve(codec)
    with pytest.raises(CodecError):
        frame_size(codec, (16,))
    with pytest.raises(CodecError):
        bits_per_value(codec, numel=16)


@pytest.mark.parametrize("shape, dtype", [((-1,), torch.float32), ((1,) * 17, torch.float32),
                                          ((4,), torch.float64), ((4,), torch.int32)])
def test_frame_size_refuses_what_encode_refuses(shape, dtype):
    with pytest.raises(CodecError):
        frame_size("q4", shape, dtype)


def test_bits_per_value_needs_values():
    with pytest.raises(CodecError):
        bits_per_value("q4", numel=0)


def test_sizes_are_exported():
    assert {"frame_size", "bits_per_value", "resolve"} <= set(compression.__all__)
