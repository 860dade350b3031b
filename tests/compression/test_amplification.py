"""Decoding never amplifies: the review's hostile frames, the per-codec ratio caps, and the
receiver's expectations (`codec=`, `shape=`) checked from the header before anything is decoded."""
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import compression
from compression import CodecError, decode, encode, resolve
from compression.cocktail import MAX_RATIO
from compression.quantize import BlockQuantizer
from tests.compression import hostile


def test_the_32kb_cocktail_frame_that_decoded_to_64mb_is_refused_at_parse():
    data = hostile.build("cocktail@64,0.000001 32 KB")
    assert len(data) < 33_000
    with pytest.raises(CodecError, match="2048x, beyond cocktail's limit of 256x"):
        decode(data)
    with pytest.raises(CodecError, match="256x"):
        compression.describe(data)


def test_hostile_frames_raise_codec_error_without_gigabytes_of_temporaries():
    # Before: the 32 KB frame decoded to 64 MB, the 16 MiB one raised RuntimeError after 1.1 GB of
    # temporaries, the corrupted 16 MiB cocktail frame took 585 MB before its CodecError.
    *results, memory = hostile.measure_in_subprocess()
    assert [r["frame"] for r in results] == hostile.NAMES
    for result in results:
        assert str(result["error"]).startswith("CodecError: "), result
    # ~16-70 MiB whatever the frame size (allocator and thread-pool warm-up), against 1152 before
    assert memory["peak_rss_growth_mib"] < 128, memory


@pytest.mark.parametrize("spec", ["cocktail@64,0.000001", "cocktail@10,0.05", "cocktail@43,1", "cocktail@20,0.1"])
def test_cocktail_refuses_parameters_that_compress_beyond_its_limit(spec):
    with pytest.raises(CodecError, match="limit of 256x"):
        resolve(spec)


@pytest.mark.parametrize("spec", ["cocktail", "cocktail@10,0.25", "cocktail@8,0.00001", "cocktail@42,1",
                                  "cocktail@10,0.06", "cocktail@5,0.2", "cocktail@3,0.5", "cocktail@1,1"])
def test_cocktail_accepts_what_the_swarm_and_the_tests_use(spec):
    assert resolve(spec).max_ratio <= MAX_RATIO
    assert decode(encode(torch.randn(5000), spec, seed=0)).shape == (5000,)


def test_caps_per_codec_are_the_best_legitimate_ratios():
    assert resolve("none").max_ratio == 1 and resolve("fp16").max_ratio == resolve("bf16").max_ratio == 2
    assert resolve("q1").max_ratio == pytest.approx(4 / (1 / 8 + 4 / 256))  # 32x less its block scales
    assert resolve("q4@64").max_ratio == pytest.approx(4 / (4 / 8 + 4 / 64))
    assert resolve("cocktail").max_ratio == pytest.approx(128 * 10 / (4 + 17 * 0.25))  # 155x


SPECS = ["none", "fp16", "bf16", "q1", "q1@65536", "q1@8", "q3~@64", "q8", "q8@8", "cocktail", "cocktail@8,0.00001",
         "cocktail@42,1", "cocktail@1,1", "cocktail@9,0.03"]


@settings(max_examples=400, deadline=None)
@given(spec=st.sampled_from(SPECS), numel=st.one_of(st.integers(0, 5000), st.integers(0, 1 << 40)))
def test_max_ratio_bounds_every_legitimate_frame(spec, numel):
    # The cap is a true bound on what the codec's own frames need, so it never refuses one.
    impl = resolve(spec)
    assert numel * 4 <= impl.max_ratio * impl.payload_size(numel, torch.float32)
    assert numel * 4 <= impl.max_ratio * compression.frame_size(spec, numel)


def _q4_frame(shape=(4, 5)):
    return encode(torch.randn(shape), "q4", seed=0)


def test_expected_codec_and_shape_are_checked_before_the_codec_decodes(monkeypatch):
    frame = _q4_frame()
    assert decode(frame, codec="q4@256", shape=torch.Size([4, 5])).shape == (4, 5)  # canonical compare

    def never(*args, **kwargs):
        raise AssertionError("decoded a frame it should have refused from the header")

    monkeypatch.setattr(BlockQuantizer, "decode", never)
    with pytest.raises(CodecError, match=r"expected a 'q3' frame, but the frame carries codec 'q4'"):
        decode(frame, codec="q3")
    with pytest.raises(CodecError, match=r"expected shape \(4, 6\), but the frame carries shape \(4, 5\)"):
        decode(frame, shape=(4, 6))
    with pytest.raises(CodecError, match="expected shape"):
        decode(frame, shape=(20,))  # same numel, other shape
    with pytest.raises(CodecError, match="unknown codec"):
        decode(frame, codec="zip")
    with pytest.raises(CodecError, match="sequence of ints"):
        decode(frame, shape=("a", 5))


def test_max_ratio_overrides_the_codecs_cap():
    frame = encode(torch.randn(1000), "q2", seed=0)  # ~14x
    assert decode(frame).shape == (1000,)
    with pytest.raises(CodecError, match=r"beyond the 4x that codec 'q2' allows"):
        decode(frame, max_ratio=4)
    assert decode(frame, max_ratio=1000).shape == (1000,)
    for bad in (0, -1, "2", True):
        with pytest.raises(CodecError, match="max_ratio"):
            decode(frame, max_ratio=bad)


def test_a_frame_beyond_its_codecs_cap_is_refused_before_decoding(monkeypatch):
    # A codec whose payload_size were smaller than its cap admits (a bug, or a third-party codec)
    # still cannot amplify: decode compares the claim against the cap, not against payload_size.
    frame = _q4_frame((1000,))
    monkeypatch.setattr(BlockQuantizer, "max_ratio", property(lambda self: 2.0))
    with pytest.raises(CodecError, match=r"claims torch.float32 \(1000,\).*beyond the 2x"):
        decode(frame)


@pytest.mark.parametrize("failure", [RuntimeError("DefaultCPUAllocator: can't allocate memory"), MemoryError()])
def test_allocation_failures_during_decode_surface_as_codec_error(monkeypatch, failure):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(BlockQuantizer, "decode", fail)
    with pytest.raises(CodecError, match=type(failure).__name__) as caught:
        decode(_q4_frame())
    assert caught.value.__cause__ is failure


def test_cocktail_mask_bits_past_the_sample_are_refused():
    frame = bytearray(encode(torch.randn(1001), "cocktail", seed=0))  # 101 samples: 3 spare mask bits
    frame[-1] |= 0x80
    with pytest.raises(CodecError, match="past its 101 samples"):
        decode(bytes(frame))


def test_cocktail_decodes_large_masks_slice_by_slice(monkeypatch):
    monkeypatch.setattr("compression.cocktail._MASK_CHUNK", 7)  # many slices, ragged last one
    x = torch.randn(20_000)
    frame = encode(x, "cocktail@3,0.5", seed=4)
    monkeypatch.undo()
    expected = decode(frame)
    monkeypatch.setattr("compression.cocktail._MASK_CHUNK", 7)
    assert torch.equal(decode(frame), expected)


def test_quantizers_decode_in_slabs_exactly_as_in_one_pass(monkeypatch):
    for spec, numel in [("q3", 10_000), ("q8~@64", 999), ("q1@8", 4097)]:
        frame = encode(torch.randn(numel), spec, seed=1)
        whole = decode(frame)
        monkeypatch.setattr("compression.quantize._DECODE_SLAB", 3 * resolve(spec).block)
        assert torch.equal(decode(frame), whole), spec
        monkeypatch.undo()


def test_hand_built_header_with_a_valid_spec_but_absurd_ratio_cannot_exist():
    # payload_size is exact, so a frame claiming more values than its codec's ratio carries more
    # bytes too; shrink the payload and the exact-length check refuses it first.
    frame = bytearray(_q4_frame((1000,)))
    struct.pack_into("<Q", frame, 10, 10_000)
    with pytest.raises(CodecError, match="payload"):
        decode(bytes(frame))
