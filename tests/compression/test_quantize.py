"""q1..q8: wire size, accuracy on N(0,1), unbiased stochastic rounding, round-to-nearest."""
import itertools
import math

import pytest
import torch

from compression import decode, encode


def _nerr(x, y):
    return float((x - y).norm() / x.norm())


@pytest.fixture(scope="module")
def normal_1m():
    return torch.randn(1 << 20, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bits", [3, 4, 6])
@pytest.mark.parametrize("shape", [(1,), (7,), (1000,), (4097,), (33, 65, 3), (1 << 16,)])
def test_wire_size_bound(bits, shape):
    x = torch.randn(shape)
    n = x.numel()
    bound = math.ceil(n * bits / 8) + 4 * math.ceil(n / 256) + 64 + 8 * x.ndim
    assert len(encode(x, f"q{bits}")) <= bound


@pytest.mark.parametrize("bits", range(1, 9))
def test_dense_packing_takes_exactly_k_bits_per_value(bits):
    n = 8 * 256  # whole blocks: payload = exponent + codes + 4 bytes of stats per block
    frame = encode(torch.randn(n), f"q{bits}")
    header = 16 + 8  # magic..spec "qk" (10 bytes) + one u64 dim, padded to 8
    assert len(frame) - header == 4 + n * bits // 8 + 4 * (n // 256)


@pytest.mark.parametrize("codec, limit", [("q3", 0.40), ("q4", 0.18), ("q6", 0.045)])
def test_accuracy_on_normal_data(normal_1m, codec, limit):
    assert _nerr(normal_1m, decode(encode(normal_1m, codec, seed=1))) <= limit


def test_error_shrinks_with_every_extra_bit(normal_1m):
    x = normal_1m[:65536]
    errors = [_nerr(x, decode(encode(x, f"q{k}", seed=3))) for k in range(1, 9)]
    assert all(a > 1.7 * b for a, b in itertools.pairwise(errors))


def test_stochastic_rounding_is_unbiased():
    x = torch.randn(1 << 14, generator=torch.Generator().manual_seed(1))
    mean = sum(decode(encode(x, "q3", seed=s)) for s in range(256)) / 256
    single = _nerr(x, decode(encode(x, "q3", seed=999)))
    assert _nerr(x, mean) <= 0.03
    assert _nerr(x, mean) < single / 8  # the error averages away like 1/sqrt(256)


def test_round_to_nearest_is_biased_and_deterministic():
    x = torch.randn(4096)
    assert encode(x, "q3~", seed=1) == encode(x, "q3~", seed=2)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_round_to_nearest_error_ratio(normal_1m, bits):
    stochastic = _nerr(normal_1m, decode(encode(normal_1m, f"q{bits}", seed=1)))
    nearest = _nerr(normal_1m, decode(encode(normal_1m, f"q{bits}~")))
    assert nearest <= 0.75 * stochastic


def test_block_size_parameter_changes_scale_count():
    x = torch.randn(1024)
    assert len(encode(x, "q4@128")) - len(encode(x, "q4")) == 4 * (1024 // 128 - 1024 // 256)
    assert _nerr(x, decode(encode(x, "q4@64", seed=1))) < _nerr(x, decode(encode(x, "q4@1024", seed=1)))


def test_constant_blocks_and_tiny_ranges_are_exact_or_close():
    x = torch.full((1000,), 3.25)
    assert torch.equal(decode(encode(x, "q3")), x)
    tiny = 1.0 + 1e-4 * torch.randn(1000)
    assert (decode(encode(tiny, "q4")) - tiny).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_quantize_like_fp32(dtype):
    x = torch.randn(65536).to(dtype)
    assert _nerr(x.float(), decode(encode(x, "q4", seed=1)).float()) <= 0.18


@pytest.mark.parametrize("magnitude", [1e-12, 1e-8, 1e-6, 1e4, 1e15])
def test_tiny_and_huge_magnitudes_keep_their_relative_accuracy(magnitude):
    # fp16 block stats alone would fall into the subnormal grid (gradients of large models are
    # ~1e-6) or overflow; the frame's power-of-two exponent keeps them in fp16's normal range
    x = magnitude * torch.randn(65536, generator=torch.Generator().manual_seed(0))
    assert _nerr(x, decode(encode(x, "q4", seed=1))) <= 0.18
    assert _nerr(x, decode(encode(x, "q6", seed=1))) <= 0.045


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("codec", ["fp16", "q3", "q4", "q6~", "cocktail"])
def test_cuda_tensors_round_trip_and_match_the_cpu(codec):
    x = torch.randn(3, 70000)
    frame = encode(x.cuda(), codec, seed=4)
    on_gpu = decode(frame, device="cuda")
    assert on_gpu.is_cuda and on_gpu.shape == x.shape
    assert torch.allclose(on_gpu.cpu(), decode(frame), atol=1e-6)
