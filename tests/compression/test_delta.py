"""ActivationDelta (AQ-SGD): identical m on both sides, full first visit, bounded memory."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import ActivationDelta, CodecError, decode


def _pair(codec="q3", **kwargs):
    return ActivationDelta(codec, **kwargs), ActivationDelta(codec, **kwargs)


def _same_memory(a, b):
    return list(a._memory) == list(b._memory) and all(torch.equal(a._memory[i], b._memory[i]) for i in a._memory)


def test_first_visit_is_exact_and_later_visits_track_the_activation():
    sender, receiver = _pair()
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(8, 16, 32, generator=gen)
    first = receiver.decode(range(4), sender.encode(range(4), base[:4]))
    assert torch.equal(first, base[:4])
    for epoch in range(1, 6):
        drifted = base + 0.01 * epoch * torch.randn(8, 16, 32, generator=gen)
        for ids in ([0, 1, 2, 3], [4, 5, 6, 7]):
            frame = sender.encode(ids, drifted[ids])
            out = receiver.decode(ids, frame)
            assert out.shape == (4, 16, 32) and _same_memory(sender, receiver)
            if epoch > 1 or ids[0] == 0:
                # delta of a slowly drifting activation: far below direct 3-bit error (~0.33)
                assert float((out - drifted[ids]).norm() / drifted[ids].norm()) < 0.05


def test_delta_frames_are_smaller_than_first_visits():
    sender, receiver = _pair("q3")
    x = torch.randn(2, 1000)
    full = sender.encode([10, 11], x)
    receiver.decode([10, 11], full)
    delta = sender.encode([10, 11], x + 0.01)
    receiver.decode([10, 11], delta)
    assert len(delta) < len(full) / 5


def test_mixed_batches_and_half_memory():
    sender, receiver = _pair("q4", memory_dtype=torch.float16)
    x = torch.randn(3, 5, dtype=torch.bfloat16)
    receiver.decode([1, 2, 3], sender.encode([1, 2, 3], x))
    out = receiver.decode([3, 4, 1], sender.encode([3, 4, 1], x))  # 4 is new, 3 and 1 are deltas
    assert out.dtype == torch.bfloat16 and _same_memory(sender, receiver)
    assert sender._memory[1].dtype == torch.float16


def test_capacity_evicts_least_recently_used_on_both_sides():
    sender, receiver = _pair(capacity=3)
    x = torch.randn(2, 6)
    for ids in ([0, 1], [2, 3], [0, 1], [4, 5], [2, 3]):
        receiver.decode(ids, sender.encode(ids, x))
        assert len(sender) <= 3 and _same_memory(sender, receiver)
    assert 5 in sender and 2 in sender and 0 not in sender
    with pytest.raises(CodecError, match="capacity"):
        sender.encode([1, 2, 3, 4], torch.randn(4, 6))


def test_out_of_step_receiver_and_wrong_ids_raise():
    sender, receiver = _pair()
    x = torch.randn(2, 6)
    sender.encode([0, 1], x)  # the receiver never saw this first visit
    frame = sender.encode([0, 1], x)
    with pytest.raises(CodecError, match="out of step"):
        receiver.decode([0, 1], frame)
    with pytest.raises(CodecError, match="sample ids"):
        receiver.decode([1, 0], frame)


@pytest.mark.parametrize("bad_ids, shape", [([0, 0], (2, 3)), ([0], (2, 3)), (["a", "b"], (2, 3))])
def test_bad_sample_ids_raise(bad_ids, shape):
    with pytest.raises(CodecError):
        ActivationDelta("q3").encode(bad_ids, torch.randn(shape))


def test_malformed_activation_frames_raise():
    sender, receiver = _pair()
    frame = sender.encode([0, 1], torch.randn(2, 6))
    for bad in [frame[:10], b"XXXX" + frame[4:], frame[:-3], frame + b"\0", 7]:
        with pytest.raises(CodecError):
            ActivationDelta("q3").decode([0, 1], bad)
    with pytest.raises(CodecError):
        decode(frame)  # not a plain codec frame
    with pytest.raises(CodecError):
        ActivationDelta("q3", capacity=0)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_property_mutated_activation_frames_raise_codec_error_or_decode(data):
    sender, receiver = _pair()
    x = torch.randn(3, 20)
    receiver.decode([0, 1, 2], sender.encode([0, 1, 2], x))
    frame = bytearray(sender.encode([0, 1, 5], x))  # rows 0, 1 are deltas, 5 is a first visit
    for _ in range(data.draw(st.integers(1, 3))):
        if frame and data.draw(st.booleans()):
            frame[data.draw(st.integers(0, len(frame) - 1))] ^= data.draw(st.integers(1, 255))
        else:
            del frame[data.draw(st.integers(0, len(frame))):]
    try:
        out = receiver.decode([0, 1, 5], bytes(frame))
    except CodecError:
        return
    assert out.shape[0] == 3


def test_a_corrupted_frame_leaves_the_receiver_unchanged():
    sender, receiver = _pair()
    x = torch.randn(2, 50)
    receiver.decode([0, 1], sender.encode([0, 1], x))
    before = {i: m.clone() for i, m in receiver._memory.items()}
    frame = sender.encode([0, 1, 2], torch.randn(3, 50))  # 2 is a first visit, 0 and 1 deltas
    with pytest.raises(CodecError):
        receiver.decode([0, 1, 2], frame[:-1])
    assert list(receiver._memory) == list(before) and all(torch.equal(receiver._memory[i], before[i]) for i in before)


def test_activations_beyond_fp16_memory_raise_instead_of_storing_inf():
    sender = ActivationDelta("q4", memory_dtype=torch.float16)
    with pytest.raises(CodecError, match="overflow"):
        sender.encode([0], torch.full((1, 4), 1e6))
    assert len(sender) == 0


def test_a_lost_frame_is_detected_and_forget_resynchronizes():
    sender, receiver = _pair()
    x = torch.randn(2, 30)
    receiver.decode([0, 1], sender.encode([0, 1], x))
    sender.encode([0, 1], x + 0.1)  # this delta never reaches the receiver (aborted step)
    frame = sender.encode([0, 1], x + 0.2)
    with pytest.raises(CodecError, match="out of step"):
        receiver.decode([0, 1], frame)  # would otherwise compute on a stale m, silently
    sender.forget([0, 1])
    receiver.decode([0, 1], sender.encode([0, 1], x))  # next visit goes in full on both sides
    receiver.decode([0, 1], sender.encode([0, 1], x + 0.3))
    assert _same_memory(sender, receiver)


def test_empty_micro_batches_and_non_tensors_raise():
    with pytest.raises(CodecError, match="empty"):
        ActivationDelta("q3").encode([], torch.randn(0, 4))
    with pytest.raises(CodecError, match="Tensor"):
        ActivationDelta("q3").encode([0], [[1.0]])


def test_forgetting_on_the_sender_alone_keeps_evictions_in_step():
    sender, receiver = _pair(capacity=3)
    x = torch.randn(1, 8)
    for i in [0, 1, 2]:
        receiver.decode([i], sender.encode([i], x))
    sender.forget([2])  # aborted step: only the sender forgets
    # [3] makes both sides evict 0 (were 2 dropped outright, the sender would keep 0 and send
    # [0] as a delta the receiver holds no m for)
    for ids in ([3], [0], [2], [1], [3]):
        receiver.decode(ids, sender.encode(ids, x + 0.1))
    assert 2 in sender and _same_memory(sender, receiver)
