"""Hostile or diverged input fails a step, never the process: `BadMessage` for a neighbour's
unusable frame (naming the sender), `NonFiniteStep` for this worker's own NaN/inf, and the
daemon treats both like a timed-out step."""
from __future__ import annotations

import math
import os
import struct
import threading

import pytest
import torch
import zmq

import compression
import models
from peers.daemon.peer import PeerDaemon, PeerOptions
from peers.dataplane import wire
from peers.dataplane.transport import BadMessage, InProcessHub, Message, PeerTimeout
from peers.dataplane.zmq_transport import ZmqTransport
from peers.pipeline import NonFiniteStep, StageExecutor
from peers.protocol import Codecs, PeerRecord, RecordError

CONFIG = models.get_config("tiny")
PLAIN = Codecs("none", "none", "none")  # raw fp32 frames, so a test can plant NaN in one

pytestmark = pytest.mark.usefixtures("eager_codecs")


@pytest.fixture(scope="module")
def data():
    return models.SequenceDataset(models.read_corpus(models.default_corpus_path()), 32, max_train=64)


def _worker(transport, stage_index: int, num_stages: int = 2, codecs: Codecs = PLAIN, group=None) -> StageExecutor:
    layers = [4] if num_stages == 1 else [2, 2]
    return StageExecutor(models.build_stage(CONFIG, layers, stage_index), stage_index=stage_index,
                         num_stages=num_stages, transport=transport, prev="s0" if stage_index else None,
                         next="s1" if stage_index < num_stages - 1 else None, group=group or [transport.name],
                         codecs=codecs, micro_batches=1, timeout=10.0)


def _untouched(worker: StageExecutor, before: str) -> None:
    """No update applied: same parameters, no Adam step taken, nothing pending."""
    assert worker.param_checksum() == before
    assert worker.optimizer.state_dict()["state"] == {} and worker.pending_step is None


def _nan_frame(shape: tuple[int, ...]) -> bytes:
    """A well-formed `none` frame of `shape` whose values are all NaN (encode itself refuses NaN)."""
    frame = bytearray(compression.encode(torch.zeros(shape), "none"))
    count = math.prod(shape)
    frame[-4 * count:] = struct.pack("<f", math.nan) * count
    return bytes(frame)


def test_a_forged_activation_frame_over_zmq_is_a_bad_message_naming_the_sender(data):
    """A well-formed wire header naming the real neighbour, a garbage payload: the step fails with
    BadMessage (not CodecError, which would end the process), nothing is applied."""
    batch = data.train_batch(1, 4, seed=0)
    context = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    with ZmqTransport("s1") as transport:
        worker = _worker(transport, 1)
        before = worker.param_checksum()
        raw.connect(transport.address)
        try:
            for index, payload in enumerate([os.urandom(5000), compression.encode(torch.zeros(3, 5), "none")[:40],
                                             compression.encode(torch.zeros(4, 32, CONFIG.d_model), "q4")]):
                forged = Message("act", index + 1, 0, payload, sample_ids=tuple(batch.sample_ids.tolist()))
                raw.send_multipart(wire.pack(forged, sender="s0", plan_version=0))
                with pytest.raises(BadMessage) as caught:
                    worker.run_step(index + 1, data.train_batch(index + 1, 4, seed=0), apply=True)
                assert not isinstance(caught.value, compression.CodecError)
                assert caught.value.sender == "s0" and caught.value.reason == "malformed"
                assert "'s0'" in str(caught.value) and f"step {index + 1}" in str(caught.value)
                _untouched(worker, before)
        finally:
            raw.close()
            context.term()


def test_a_nan_activation_frame_is_a_nonfinite_bad_message(data):
    hub = InProcessHub()
    upstream, worker = hub.endpoint("s0"), _worker(hub.endpoint("s1"), 1)
    before = worker.param_checksum()
    batch = data.train_batch(1, 4, seed=0)
    upstream.send("s1", Message("act", 1, 0, _nan_frame((4, 32, CONFIG.d_model)),
                                sample_ids=tuple(batch.sample_ids.tolist())))
    with pytest.raises(BadMessage) as caught:
        worker.run_step(1, batch)
    assert (caught.value.sender, caught.value.reason) == ("s0", "nonfinite")
    _untouched(worker, before)


def test_a_nan_gradient_frame_is_a_nonfinite_bad_message(data):
    hub = InProcessHub()
    downstream, worker = hub.endpoint("s1"), _worker(hub.endpoint("s0"), 0)
    before = worker.param_checksum()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.run_step(1, data.train_batch(1, 4, seed=0))
        except BaseException as error:  # noqa: B036 - handed to the test thread
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    activations = downstream.recv("s0", "act", 1, 0, timeout=30)
    downstream.send("s0", Message("grad", 1, 0, _nan_frame(compression.describe(activations.payload).shape)))
    thread.join(timeout=30)
    assert len(failure) == 1 and isinstance(failure[0], BadMessage)
    assert (failure[0].sender, failure[0].reason) == ("s1", "nonfinite")
    _untouched(worker, before)


def test_samples_the_pipeline_did_not_promise_are_a_malformed_message(data):
    hub = InProcessHub()
    upstream, worker = hub.endpoint("s0"), _worker(hub.endpoint("s1"), 1)
    batch = data.train_batch(1, 4, seed=0)
    upstream.send("s1", Message("act", 1, 0, compression.encode(torch.zeros(4, 32, CONFIG.d_model), "none"),
                                sample_ids=(90, 91, 92, 93)))
    with pytest.raises(BadMessage, match="delivered samples") as caught:
        worker.run_step(1, batch)
    assert (caught.value.sender, caught.value.reason) == ("s0", "malformed")


def test_a_nan_loss_aborts_the_step_before_the_optimizer_and_the_worker_trains_on(data):
    hub = InProcessHub()
    worker = _worker(hub.endpoint("s0"), 0, num_stages=1)
    before = worker.param_checksum()
    healthy = worker.stage.loss
    worker.stage.loss = lambda out, targets: healthy(out, targets) * math.nan
    with pytest.raises(NonFiniteStep, match="loss is nan"):
        worker.run_step(1, data.train_batch(1, 4, seed=0), apply=True)
    _untouched(worker, before)
    worker.stage.loss = healthy  # the rerun under a new plan goes through
    assert math.isfinite(worker.run_step(1, data.train_batch(1, 4, seed=0)).loss)
    assert worker.param_checksum() != before


def test_nan_activations_are_never_sent(data):
    hub = InProcessHub()
    downstream, worker = hub.endpoint("s1"), _worker(hub.endpoint("s0"), 0, codecs=Codecs())
    with torch.no_grad():
        next(worker.stage.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteStep, match="activations hold NaN or inf"):
        worker.run_step(1, data.train_batch(1, 4, seed=0))
    with pytest.raises(PeerTimeout):
        downstream.recv("s0", "act", 1, 0, timeout=0)
    assert worker.optimizer.state_dict()["state"] == {} and worker.pending_step is None


def test_nan_gradients_never_reach_the_all_reduce(data):
    """Buckets finished before the NaN one may already be on the wire (they overlap backward); the
    bucket holding NaN never leaves, and the step is not applied."""
    hub = InProcessHub()
    replica, worker = hub.endpoint("s0b"), _worker(hub.endpoint("s0"), 0, num_stages=1, group=["s0", "s0b"])
    before = worker.param_checksum()
    parameters = list(worker.stage.parameters())
    parameters[0].register_hook(lambda grad: grad * math.nan)  # the embedding: the last bucket to be final
    buckets = worker.averager.begin(1, [p.numel() for p in reversed(parameters)]).buckets
    with pytest.raises(NonFiniteStep, match="gradients hold NaN or inf"):
        worker.run_step(1, data.train_batch(1, 4, seed=0))
    for bucket in range(len(buckets)):  # s0 is rank 0 of 2: its share for s0b of bucket b has index 2b + 1
        if bucket < len(buckets) - 1:
            share = replica.recv("s0", "ar-reduce", 1, 2 * bucket + 1, timeout=0)
            assert torch.isfinite(compression.decode(share.payload)).all()
        else:
            with pytest.raises(PeerTimeout):
                replica.recv("s0", "ar-reduce", 1, 2 * bucket + 1, timeout=0)
    _untouched(worker, before)


class _Runner:
    """Stands in for a `StageRunner` whose step fails with `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.plan = type("Plan", (), {"version": 7})()

    def prepare(self, step: int) -> None:
        raise self.error


@pytest.mark.parametrize("error", [
    BadMessage("s0", "malformed", "activations of step 3 micro-batch 0: frame magic is not SWCF"),
    NonFiniteStep("step 3 micro-batch 0: the loss is nan"),
], ids=["bad-message", "non-finite"])
def test_the_daemon_fails_the_step_reports_and_counts_it_and_goes_on(error):
    events: list[str] = []
    daemon = PeerDaemon(PeerOptions(initial_peers=(), name="victim"), on_event=events.append)
    announced: list[PeerRecord] = []
    daemon._report = lambda: announced.append(PeerRecord.from_wire(daemon.record.to_wire()))
    with ZmqTransport("victim") as transport:
        daemon._transport = transport
        daemon._record = PeerRecord(name="victim", address=transport.address, device="cpu", tflops=1.0,
                                    memory_gb=1.0, state="training", plan_version=7)
        assert daemon._prepare(_Runner(error), 3) is None
        assert daemon._failed_version == 7 and announced and announced[-1].error.startswith("step 3: ")
        assert events == [f"victim: step 3 failed: {error}"]
        counted = transport.stats()["rejected"]
    if isinstance(error, BadMessage):
        assert "'s0'" in announced[-1].error and "SWCF" in announced[-1].error
        assert counted["malformed"] == 1 and announced[-1].rejected["malformed"] == 1
    else:
        assert sum(counted.values()) == 0 and "loss is nan" in announced[-1].error


def test_a_peer_record_counts_rejections_by_category_and_refuses_made_up_ones():
    fields = {"name": "p1", "address": "tcp://127.0.0.1:1", "device": "cpu", "tflops": 1.0, "memory_gb": 1.0}
    record = PeerRecord.from_wire({**fields, "rejected": {"malformed": 2, "flood": 5}})
    assert record.rejected == {"malformed": 2, "flood": 5}
    with pytest.raises(RecordError, match="unknown categories"):
        PeerRecord.from_wire({**fields, "rejected": {"bogus": 1}})
    with pytest.raises(RecordError):
        PeerRecord.from_wire({**fields, "rejected": {"malformed": -1}})
