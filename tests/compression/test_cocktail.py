"""cocktail: strided random sample + top-k + 4-bit values; trains with error feedback."""
import pytest
import torch

from compression import CodecError, ErrorFeedback, decode, encode


def test_default_frame_is_about_150x_smaller_than_fp32():
    x = torch.randn(1 << 16)
    frame = encode(x, "cocktail", seed=0)
    assert 8 * len(frame) / x.numel() < 0.25
    y = decode(frame)
    sampled = -(-x.numel() // 10)  # ceil: one value in every 10
    assert int((y != 0).sum()) == -(-sampled // 4)  # a quarter of the sample kept, rounded up


def test_kept_values_are_the_largest_of_the_sample_and_the_sample_shifts_per_seed():
    x = torch.randn(1000)
    masks = []
    for seed in range(5):
        y = decode(encode(x, "cocktail@5,0.2", seed=seed))
        kept = (y != 0).nonzero().view(-1)
        offset = int(kept[0]) % 5
        assert torch.all(kept % 5 == offset)
        sample = x[offset::5]
        assert x[kept].abs().min() >= sample.abs().kthvalue(len(sample) - len(kept)).values
        masks.append(offset)
    assert len(set(masks)) > 1


def test_same_seed_samples_the_same_positions_on_every_replica():
    a, b = torch.randn(5000), torch.randn(5000)
    ya, yb = decode(encode(a, "cocktail", seed=7)), decode(encode(b, "cocktail", seed=7))
    offsets_a = set((ya.nonzero().view(-1) % 10).tolist())
    offsets_b = set((yb.nonzero().view(-1) % 10).tolist())
    assert offsets_a == offsets_b and len(offsets_a) == 1


def test_with_error_feedback_everything_is_eventually_sent():
    feedback = ErrorFeedback("cocktail")
    g = torch.randn(4000, generator=torch.Generator().manual_seed(0))
    total = torch.zeros(4000)
    for step in range(400):
        total += decode(feedback.encode("g", g, seed=step))
    assert float((total / 400 - g).norm() / g.norm()) < 0.15


@pytest.mark.parametrize("mutate", [lambda f: f[:-1], lambda f: f[:-1] + bytes([f[-1] ^ 1])])
def test_corrupted_mask_or_length_raises(mutate):
    frame = encode(torch.randn(999), "cocktail", seed=1)
    with pytest.raises(CodecError):
        decode(mutate(frame))


def test_small_keep_fractions_make_decodable_frames():
    frame = encode(torch.randn(1000), "cocktail@8,0.00001", seed=0)
    assert decode(frame).shape == (1000,)


def test_nan_outside_the_sample_is_rejected_too():
    x = torch.randn(1000)
    offset = int(decode(encode(x, "cocktail", seed=3)).nonzero()[0]) % 10  # where seed 3 samples
    x[(offset + 1) % 10::10] = float("nan")  # none of these positions is in the sample
    with pytest.raises(CodecError, match="NaN"):
        encode(x, "cocktail", seed=3)


def test_a_small_frame_cannot_claim_a_huge_tensor():
    # The mask is 1 bit per sampled value: the largest stride bounds the decoded size per byte.
    with pytest.raises(CodecError, match="stride"):
        encode(torch.randn(10), "cocktail@65536,0.5")
