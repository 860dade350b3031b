"""Receivers decode with what they expect: the stage executor (activations and their gradients),
the all-reduce (chunks) and AQ-SGD's delta frames pass the plan's codec and the expected shape, so a
frame of another codec or size is refused from its header. (Here rather than under tests/peers,
whose files other changes own; they exercise peers code through its public classes.)"""
import pytest
import torch

import models
from compression import ActivationDelta, CodecError, encode
from peers.allreduce import GradientAverager
from peers.dataplane.transport import BadMessage, InProcessHub
from peers.pipeline import StageExecutor
from peers.pipeline.channels import ActivationChannel
from peers.protocol import Codecs
from tests.threads import run_concurrently

CONFIG = models.get_config("tiny")


def test_delta_frames_carry_none_for_first_visits_and_the_link_codec_for_deltas():
    sender, receiver = ActivationDelta("q4"), ActivationDelta("q4")
    x = torch.randn(3, 4, 8)
    first = sender.encode([0, 1, 2], x)
    assert ActivationDelta.shape_of(first) == (3, 4, 8)
    with pytest.raises(CodecError, match=r"expected shape \(3, 5, 8\), but the frame carries shape \(3, 4, 8\)"):
        ActivationDelta("q4").decode([0, 1, 2], first, shape=(3, 5, 8))
    with pytest.raises(CodecError, match="expected shape"):
        ActivationDelta("q4").decode([0, 1, 2], first, shape=(2, 4, 8))
    receiver.decode([0, 1, 2], first, shape=(3, 4, 8))
    delta = sender.encode([0, 1, 2], x + 0.01)
    other = ActivationDelta("q3")  # same m, another codec
    other.decode([0, 1, 2], first)
    with pytest.raises(CodecError, match=r"expected a 'q3' frame, but the frame carries codec 'q4'"):
        other.decode([0, 1, 2], delta)
    with pytest.raises(CodecError, match="expected rows of shape"):
        receiver.decode([0, 1, 2], delta, shape=(3, 4, 9))
    assert receiver.decode([0, 1, 2], delta, shape=(3, 4, 8)).shape == (3, 4, 8)


def test_a_first_visit_sent_quantized_is_refused():
    sender = ActivationDelta("q4")
    frame = bytearray(sender.encode([5], torch.randn(1, 16)))
    quantized = encode(torch.randn(1, 16), "q8", seed=0)
    head = len(frame) - len(encode(torch.randn(1, 16), "none"))  # the full part is the whole body
    forged = bytes(frame[:head - 8]) + len(quantized).to_bytes(8, "little") + quantized
    with pytest.raises(CodecError, match=r"expected a 'none' frame, but the frame carries codec 'q8'"):
        ActivationDelta("q4").decode([5], forged)


def test_activation_channel_checks_codec_and_shape():
    channel = ActivationChannel("q3")
    frame = encode(torch.randn(2, 4, 8), "q3", seed=0)
    assert channel.shape_of(frame) == (2, 4, 8)
    assert channel.decode(torch.tensor([0, 1]), frame, shape=(2, 4, 8)).shape == (2, 4, 8)
    with pytest.raises(CodecError, match="expected a 'q3' frame"):
        channel.decode(torch.tensor([0, 1]), encode(torch.randn(2, 4, 8), "q4"))
    with pytest.raises(CodecError, match="expected shape"):
        channel.decode(torch.tensor([0, 1]), frame, shape=(2, 4, 9))


def test_all_reduce_refuses_a_replicas_chunk_of_another_codec():
    hub = InProcessHub()
    names = ["r0", "r1"]
    averagers = [GradientAverager(hub.endpoint("r0"), names, "q4", timeout=5),
                 GradientAverager(hub.endpoint("r1"), names, "q8", timeout=5)]
    grads = [[torch.randn(50)], [torch.randn(50)]]
    before = [g[0].clone() for g in grads]
    _, errors = run_concurrently([lambda a=a, g=g: a.average(1, g) for a, g in zip(averagers, grads, strict=True)],
                                 timeout=60, what="an all-reduce replica")
    assert len(errors) == 2 and all(isinstance(e, BadMessage) and e.reason == "malformed" for e in errors), errors
    assert {e.sender for e in errors} == {"r0", "r1"}
    assert "disagree on the codec" in str(errors[0]) and "expected a 'q" in str(errors[0])
    assert all(torch.equal(g[0], b) for g, b in zip(grads, before, strict=True))


@pytest.mark.usefixtures("eager_codecs")
def test_stage_refuses_an_activation_gradient_of_another_codec():
    data = models.SequenceDataset(models.read_corpus(models.default_corpus_path()), 16, max_train=16)
    hub = InProcessHub()
    codecs = [Codecs("q3", "q4", "q4"), Codecs("q3", "q6", "q4")]  # stage 1 sends q6 gradients
    workers = [StageExecutor(models.build_stage(CONFIG, [2, 2], s), stage_index=s, num_stages=2,
                             transport=hub.endpoint(f"s{s}"), prev="s0" if s else None, next=None if s else "s1",
                             group=[f"s{s}"], codecs=codecs[s], timeout=10) for s in range(2)]
    batch = data.train_batch(1, 2, seed=0)
    before = workers[0].param_checksum()
    results, errors = run_concurrently([lambda w=w: w.run_step(1, batch) for w in workers], timeout=60,
                                       what="a stage worker")
    # A neighbour's unusable frame fails the step as a BadMessage naming it (a CodecError would end the process).
    assert len(errors) == 1 and isinstance(errors[0], BadMessage), errors
    assert (errors[0].sender, errors[0].reason) == ("s1", "malformed")
    assert "expected a 'q4' frame, but the frame carries codec 'q6'" in str(errors[0])
    assert workers[0].param_checksum() == before
