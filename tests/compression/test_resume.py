"""The stateful codecs' checkpoints: a restored ActivationDelta or ErrorFeedback continues exactly
as the original would, through a weights-only torch.load."""
import io

import pytest
import torch

from compression import ActivationDelta, CodecError, ErrorFeedback


def _checkpointed(blob):
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def _visits(sender, receiver, rounds, gen):
    """Frames and decoded rows of a few micro-batches over 6 samples (capacity 4: some are evicted)."""
    out = []
    for ids in rounds:
        frame = sender.encode(ids, torch.randn(len(ids), 3, 8, generator=gen), seed=len(out))
        out.append((frame, receiver.decode(ids, frame)))
    return out


def test_a_restored_link_sends_and_decodes_exactly_like_the_original():
    kwargs = {"capacity": 4, "memory_dtype": torch.float16}
    sender, receiver = ActivationDelta("q3", **kwargs), ActivationDelta("q3", **kwargs)
    gen = torch.Generator().manual_seed(0)
    _visits(sender, receiver, [[0, 1], [2, 3], [0, 4], [1, 2]], gen)
    sender.forget([0])  # a forgotten slot keeps its place in the eviction order
    saved = _checkpointed([sender.state(), receiver.state()])
    assert 0 in saved[0]["order"] and 0 not in saved[0]["held"] and 0 in saved[1]["held"]
    restored = ActivationDelta("q3", **kwargs), ActivationDelta("q3", **kwargs)
    restored[0].load_state(saved[0])
    restored[1].load_state(saved[1])
    later = [[0, 1], [5, 2], [3, 4], [0, 1]]
    expected = _visits(sender, receiver, later, torch.Generator().manual_seed(1))
    got = _visits(*restored, later, torch.Generator().manual_seed(1))
    assert [frame for frame, _ in got] == [frame for frame, _ in expected]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, expected, strict=True))


def test_memory_loads_onto_the_device_asked_for():
    side = ActivationDelta("q3")
    side.encode([0], torch.randn(1, 4))
    fresh = ActivationDelta("q3")
    fresh.load_state(side.state(), device="meta")
    assert fresh.state()["memory"][0].device.type == "meta"


@pytest.mark.parametrize(("other", "match"), [
    (ActivationDelta("q4"), "codec"),
    (ActivationDelta("q3", capacity=8), "capacity"),
    (ActivationDelta("q3", memory_dtype=torch.float16), "memory_dtype"),
])
def test_a_state_of_another_link_is_refused(other, match):
    side = ActivationDelta("q3")
    side.encode([0], torch.randn(1, 4))
    with pytest.raises(CodecError, match=match):
        other.load_state(side.state())


def test_an_inconsistent_state_is_refused():
    side = ActivationDelta("q3")
    side.encode([0, 1], torch.randn(2, 4))
    state = side.state()
    state["held"].append(7)
    with pytest.raises(CodecError, match="inconsistent"):
        ActivationDelta("q3").load_state(state)
    del state["order"]
    with pytest.raises(CodecError, match="lacks"):
        ActivationDelta("q3").load_state(state)


def test_restored_residuals_make_the_same_next_frame():
    feedback = ErrorFeedback("q4")
    gen = torch.Generator().manual_seed(0)
    feedback.encode(("reduce", 1), torch.randn(64, generator=gen), seed=1)
    restored = ErrorFeedback("q4")
    restored.load_residuals(_checkpointed(feedback.residuals()))
    chunk = torch.randn(64, generator=gen)
    assert restored.encode(("reduce", 1), chunk, seed=2) == feedback.encode(("reduce", 1), chunk, seed=2)
    copy = feedback.residuals()[("reduce", 1)]
    copy.add_(1.0)
    assert not torch.equal(copy, feedback.residual(("reduce", 1))), "residuals() must copy"
    with pytest.raises(CodecError, match="fp32"):
        restored.load_residuals({("reduce", 1): torch.zeros(64, dtype=torch.float16)})
