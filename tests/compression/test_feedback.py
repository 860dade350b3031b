"""ErrorFeedback: the decoded sum tracks the input sum within one quantization step."""
import pytest
import torch

from compression import CodecError, ErrorFeedback, decode, encode


@pytest.mark.parametrize("codec", ["q2", "q4", "q4~", "cocktail"])
def test_sum_of_decoded_tracks_sum_of_inputs(codec):
    gen = torch.Generator().manual_seed(0)
    feedback = ErrorFeedback(codec)
    sent = torch.zeros(5000)
    got = torch.zeros(5000)
    plain = torch.zeros(5000)
    for step in range(50):
        x = torch.randn(5000, generator=gen)
        sent += x
        got += decode(feedback.encode("grad", x, seed=step))
        plain += decode(encode(x, codec, seed=step))
    residual = feedback.residual("grad")
    assert torch.allclose(sent - got, residual, atol=1e-3)
    if codec.startswith("q"):
        # one quantization step: the block range over 2**k - 1 levels (blocks here span < 12)
        step_size = 12 / (2 ** int(codec[1]) - 1)
        assert residual.abs().max() <= step_size
    # without feedback the 50 rounding errors (or dropped values) pile up
    assert (sent - got).norm() < (0.6 if codec == "cocktail" else 0.3) * (sent - plain).norm()


def test_keys_are_independent_and_reset_forgets():
    feedback = ErrorFeedback("q3")
    feedback.encode(("peer-1", 0), torch.randn(100))
    feedback.encode(("peer-2", 0), torch.randn(7, 3))
    assert len(feedback) == 2 and feedback.residual(("peer-2", 0)).shape == (7, 3)
    feedback.reset(("peer-1", 0))
    assert feedback.residual(("peer-1", 0)) is None and len(feedback) == 1
    feedback.reset()
    assert len(feedback) == 0


def test_shape_change_and_bad_input_keep_state_and_raise():
    feedback = ErrorFeedback("q4")
    feedback.encode("k", torch.randn(10))
    before = feedback.residual("k").clone()
    with pytest.raises(CodecError, match="reset"):
        feedback.encode("k", torch.randn(11))
    bad = torch.randn(10)
    bad[3] = float("nan")
    with pytest.raises(CodecError, match="NaN"):
        feedback.encode("k", bad)
    assert torch.equal(feedback.residual("k"), before)


def test_half_precision_frames_keep_the_input_dtype():
    feedback = ErrorFeedback("q4")
    frame = feedback.encode("k", torch.randn(300, dtype=torch.bfloat16))
    assert decode(frame).dtype == torch.bfloat16
    assert feedback.residual("k").dtype == torch.float32


def test_unknown_codec_fails_at_construction():
    with pytest.raises(CodecError):
        ErrorFeedback("q11")


def test_unhashable_keys_and_non_tensors_raise_codec_error():
    feedback = ErrorFeedback("q4")
    with pytest.raises(CodecError, match="hashable"):
        feedback.encode(["peer", 0], torch.randn(10))
    with pytest.raises(CodecError, match="Tensor"):
        feedback.encode("k", [1.0, 2.0])
    assert len(feedback) == 0
