"""The stage executor over a real Transport: state transfer, checksums, and aborts that never
half-apply a step."""
import copy
import threading
import time

import pytest
import torch

import models
from peers.daemon.stage_runner import PlanLink
from peers.dataplane.transport import InProcessHub, PeerTimeout
from peers.pipeline import OptimizerSettings, StageExecutor
from peers.protocol import Codecs
from tests.threads import run_concurrently

CONFIG = models.get_config("tiny")
LAYERS = [2, 2]
DEFAULT_OPTIMIZER = OptimizerSettings()


pytestmark = pytest.mark.usefixtures("eager_codecs")


@pytest.fixture(scope="module")
def data():
    return models.SequenceDataset(models.read_corpus(models.default_corpus_path()), 32, max_train=64)


def _grid(codecs, replicas=2, timeout=30.0, wrap=lambda transport: transport, optimizer=DEFAULT_OPTIMIZER):
    """workers[s][r] of a 2-stage grid, each on its own endpoint named s{s}r{r} (passed through `wrap`)."""
    hub = InProcessHub()
    workers = []
    for s in range(2):
        group = [f"s{s}r{r}" for r in range(replicas)]
        workers.append([StageExecutor(models.build_stage(CONFIG, LAYERS, s), stage_index=s, num_stages=2,
                                    transport=wrap(hub.endpoint(f"s{s}r{r}")), prev=f"s0r{r}" if s else None,
                                    next=None if s else f"s1r{r}", group=group, codecs=codecs,
                                    micro_batches=2, timeout=timeout, delta_capacity=1024, optimizer=optimizer)
                    for r in range(replicas)])
    return hub, workers


def _step(workers, data, step, apply=True):
    replicas = len(workers[0])
    shares = data.train_batch(step, 4 * replicas, seed=0).chunk(replicas)
    cells = [(s, r) for s in range(2) for r in range(replicas)]
    results, errors = run_concurrently(
        [lambda s=s, r=r: workers[s][r].run_step(step, shares[r], apply=apply) for s, r in cells],
        timeout=120, what="a stage worker")
    assert not errors, errors
    return dict(zip(cells, results, strict=True))


def test_compressed_step_keeps_replicas_identical_and_reports_channels(data):
    _, workers = _grid(Codecs("q3", "q6", "q4", forward_delta=True))
    for step in (1, 2, 3):
        results = _step(workers, data, step)
        for row in workers:
            assert row[0].param_checksum() == row[1].param_checksum()
    assert results[1, 0].loss is not None and results[0, 0].loss is None
    assert results[0, 0].stats.bytes["forward"] > 0 and results[0, 0].stats.bytes["backward"] == 0
    assert results[1, 0].stats.bytes["backward"] > 0 and results[1, 0].stats.bytes["forward"] == 0
    assert results[0, 0].stats.bytes["gradient"] > 0
    assert results[0, 0].tokens == 4 * 32


def test_every_message_of_a_step_carries_the_plan_version_its_link_stamps(data):
    stamps = set()

    class Stamped:
        """The endpoint, noting the (kind, plan version) of everything sent."""

        def __init__(self, inner):
            self.inner, self.name = inner, inner.name

        def send(self, to, message):
            stamps.add((message.kind, message.plan_version))
            self.inner.send(to, message)

        def recv(self, *args, **kwargs):
            return self.inner.recv(*args, **kwargs)

    # the engine knows no plans: the plan's link is the one place its version goes on every message
    _, workers = _grid(Codecs("none", "none", "q4"), wrap=lambda end: PlanLink(Stamped(end), 7, threading.Event(), 30))
    _step(workers, data, 1)
    assert stamps == {("act", 7), ("grad", 7), ("ar-reduce", 7), ("ar-gather", 7)}


def test_a_step_says_where_its_time_went_waiting_on_a_slow_neighbour(data):
    delay_s = 0.4

    class SlowActivations:
        """Replica 0's stage 0 endpoint: each activation leaves `delay_s` late."""

        def __init__(self, inner):
            self.inner, self.name = inner, inner.name

        def send(self, to, message):
            if self.name == "s0r0" and message.kind == "act":
                time.sleep(delay_s)
            self.inner.send(to, message)

        def recv(self, *args, **kwargs):
            return self.inner.recv(*args, **kwargs)

    _, workers = _grid(Codecs("none", "none", "q4"), wrap=SlowActivations)
    results = _step(workers, data, 1)
    late, on_time = results[1, 0].times, results[1, 1].times
    assert late.wait_forward_s >= 2 * delay_s * 0.9  # both micro-batches came late
    assert late.wait_forward_s > on_time.wait_forward_s + delay_s
    assert results[0, 0].times.wait_forward_s == 0 and results[1, 0].times.wait_backward_s == 0  # no such waits
    assert results[0, 1].times.wait_backward_s > 0 and on_time.allreduce_s > delay_s  # its replica is late
    for result in results.values():
        times = result.times
        assert 0 < times.compute_s(result.seconds) <= result.seconds
        assert times.wait_forward_s + times.wait_backward_s + times.allreduce_s <= result.seconds


def test_state_dict_carries_parameters_and_optimizer_state(data):
    _, workers = _grid(Codecs("none", "none", "none"), replicas=1)
    for step in (1, 2):
        _step(workers, data, step)
    hub, fresh = _grid(Codecs("none", "none", "none"), replicas=1)
    for s in range(2):
        fresh[s][0].load_state_dict(workers[s][0].state_dict())
        assert fresh[s][0].param_checksum() == workers[s][0].param_checksum()
        assert fresh[s][0].optimizer.state_dict()["state"], "optimizer moments must travel too"
    _step(workers, data, 3)
    _step(fresh, data, 3)
    for s in range(2):  # the same update: Adam moments came along, not just the weights
        assert fresh[s][0].param_checksum() == workers[s][0].param_checksum()


def _snapshot(workers):
    """Every worker's parameters and Adam moments, as plain copies."""
    return [[copy.deepcopy(worker.state_dict()) for worker in row] for row in workers]


def _same_state(a, b):
    flat_a, flat_b = _tensors(a), _tensors(b)
    return len(flat_a) == len(flat_b) and all(torch.equal(x, y) for x, y in zip(flat_a, flat_b, strict=True))


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    return []


def test_a_discarded_update_leaves_parameters_and_adam_state_untouched(data):
    _, workers = _grid(Codecs("q3", "q6", "q4"))
    _step(workers, data, 1)
    before = _snapshot(workers)
    results = _step(workers, data, 2, apply=False)
    assert results[1, 0].loss is not None and all(w.pending_step == 2 for row in workers for w in row)
    assert _same_state(_snapshot(workers), before), "a prepared step must not touch parameters or moments"
    with pytest.raises(RuntimeError, match="step 2 is prepared"):
        workers[0][0].run_step(3, data.train_batch(3, 4, seed=0))
    for row in workers:
        for worker in row:
            worker.discard_update()
            assert worker.pending_step is None
    assert _same_state(_snapshot(workers), before)
    with pytest.raises(RuntimeError, match="without a prepared step"):
        workers[0][0].apply_update()


def test_prepare_then_apply_equals_run_step_even_after_a_discard(data):
    """Two-phase steps change no number: same parameters, moments and losses as plain run_step,
    with the warm-up learning rate of the prepared step (not of the call to apply)."""
    codecs, settings = Codecs("q3", "q6", "q4"), OptimizerSettings(warmup_steps=4)
    _, plain = _grid(codecs, optimizer=settings)
    _, two_phase = _grid(codecs, optimizer=settings)
    _step(two_phase, data, 1, apply=False)
    for row in two_phase:
        for worker in row:
            worker.discard_update()  # an aborted step 1 is rerun below
    for step in (1, 2, 3):
        expected = _step(plain, data, step)
        got = _step(two_phase, data, step, apply=False)
        for row in two_phase:
            for worker in row:
                worker.apply_update()
        assert got[1, 0].loss == expected[1, 0].loss
    assert _same_state(_snapshot(two_phase), _snapshot(plain))


def test_missing_neighbour_times_out_without_touching_parameters(data):
    _, workers = _grid(Codecs("none", "none", "q4"), replicas=1, timeout=0.3)
    first = workers[0][0]
    before = first.param_checksum()
    with pytest.raises(PeerTimeout, match="grad"):
        first.run_step(1, data.train_batch(1, 4, seed=0))  # stage 1 never runs
    assert first.param_checksum() == before
    assert all(not state for state in first.optimizer.state_dict()["state"].values())


def test_missing_replica_aborts_the_all_reduce_before_the_optimizer(data):
    _, workers = _grid(Codecs("none", "none", "q4"), replicas=2, timeout=0.3)
    solo = workers[0][0]
    solo_last = workers[1][0]
    before = solo.param_checksum(), solo_last.param_checksum()
    batch = data.train_batch(1, 4, seed=0)
    outcomes = []

    def last_stage():
        try:
            solo_last.run_step(1, batch)
        except PeerTimeout:
            outcomes.append("timeout")

    thread = threading.Thread(target=last_stage)
    thread.start()
    with pytest.raises(PeerTimeout):  # the pipeline completes, replica 1 never averages
        solo.run_step(1, batch)
    thread.join(timeout=30)
    assert outcomes == ["timeout"]
    assert (solo.param_checksum(), solo_last.param_checksum()) == before


def test_wiring_and_batch_errors():
    hub = InProcessHub()
    stage = models.build_stage(CONFIG, LAYERS, 0)
    with pytest.raises(ValueError, match="prev"):
        StageExecutor(stage, stage_index=0, num_stages=2, transport=hub.endpoint("a"), prev="x", next="b", group=["a"])
    worker = StageExecutor(stage, stage_index=0, num_stages=2, transport=hub.endpoint("b"), prev=None, next="c",
                         group=["b"], codecs=Codecs("none", "none", "none"))
    with pytest.raises(ValueError, match="needs this replica's batch"):
        worker.run_step(1, None)


def test_the_all_reduce_starts_during_the_last_backward_pass(data):
    """Overlap: the last stage sends its first all-reduce shares (the last layers' bucket) before its
    backward pass has produced the gradient it returns upstream, which comes at the very end of it."""
    sent = {"s1r0": []}

    class Logged:
        def __init__(self, inner):
            self.inner, self.name = inner, inner.name

        def send(self, to, message):
            sent.setdefault(self.name, []).append((message.kind, message.index))
            self.inner.send(to, message)

        def recv(self, *args, **kwargs):
            return self.inner.recv(*args, **kwargs)

    _, workers = _grid(Codecs("none", "none", "q4"), wrap=Logged)
    assert len(workers[1][0].averager.begin(1, [p.numel() for p in workers[1][0].stage.parameters()]).buckets) >= 2
    _step(workers, data, 1)
    log = sent["s1r0"]
    last_gradient_upstream = max(i for i, (kind, _) in enumerate(log) if kind == "grad")
    first_share = min(i for i, (kind, _) in enumerate(log) if kind == "ar-reduce")
    assert first_share < last_gradient_upstream, log
    shares = [index for kind, index in log if kind == "ar-reduce"]
    assert shares == sorted(shares) and len(shares) >= 2  # one share per bucket, the first bucket first


def test_bucketed_overlap_trains_exactly_like_the_whole_gradient_at_once(data):
    """With `none` gradients the buckets change nothing: the same parameters as one bucket."""
    results = {}
    for bucket_values in (2**18, 10**9):
        _, workers = _grid(Codecs("none", "none", "none"))
        for row in workers:
            for worker in row:
                worker.averager.bucket_values = bucket_values
        for step in (1, 2):
            _step(workers, data, step)
        results[bucket_values] = [workers[s][0].stage.state_dict() for s in range(2)]
    for one, many in zip(results[10**9], results[2**18], strict=True):
        for key in one:
            torch.testing.assert_close(many[key], one[key], rtol=1e-5, atol=1e-6)
