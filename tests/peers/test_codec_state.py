"""Exact resume: a grid restored from `state_dict()` plus `codec_state()` (through a weights-only
checkpoint) repeats the original bit for bit; without the codec state it does not; and a codec
state from another executor, or from an unsettled step, is refused."""
import io

import pytest
import torch

import compression
import models
from peers.dataplane.transport import InProcessHub
from peers.pipeline import StageExecutor
from peers.protocol import Codecs
from tests.threads import run_concurrently

CONFIG = models.get_config("tiny")
LAYERS = [2, 2]
CODECS = Codecs(forward_delta=True)  # AC-SGD's q3 / q6 / q4, forward as AQ-SGD deltas
CELLS = [(s, r) for s in range(2) for r in range(2)]
K, M = 3, 3  # steps before the snapshot, steps after it

pytestmark = pytest.mark.usefixtures("eager_codecs")


def _grid(codecs=CODECS, capacity=64):
    """workers[s][r] of a fresh 2-stage x 2-replica grid on one in-process hub, endpoints s{s}r{r}."""
    hub = InProcessHub()
    return [[_executor(hub, s, r, codecs=codecs, capacity=capacity) for r in range(2)] for s in range(2)]


def _executor(hub, s, r, *, codecs=CODECS, capacity=64, prev=None, group=None):
    return StageExecutor(models.build_stage(CONFIG, LAYERS, s), stage_index=s, num_stages=2,
                         transport=hub.endpoint(f"s{s}r{r}"), prev=(prev or f"s0r{r}") if s else None,
                         next=None if s else f"s1r{r}", group=group or [f"s{s}r0", f"s{s}r1"], codecs=codecs,
                         micro_batches=2, timeout=30.0, delta_capacity=capacity)


def _step(workers, data, step, apply=True):
    """One step of the whole grid: the two replicas' losses (last stage)."""
    shares = data.train_batch(step, 8, seed=0).chunk(2)
    results, errors = run_concurrently(
        [lambda s=s, r=r: workers[s][r].run_step(step, shares[r], apply=apply) for s, r in CELLS],
        timeout=120, what="a stage worker")
    assert not errors, errors
    return [results[CELLS.index((1, r))].loss for r in range(2)]


def _run(workers, data, steps):
    """Losses of every step, then every worker's parameter checksum."""
    losses = [_step(workers, data, step) for step in steps]
    return losses, [workers[s][r].param_checksum() for s, r in CELLS]


def _checkpointed(blob):
    """`blob` through torch.save and a weights-only torch.load, as a checkpoint or a transfer carries it."""
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


@pytest.fixture(scope="module")
def history():
    """A grid's snapshot after K steps (weights-only round-tripped), and its losses and checksums
    over the M steps after that. 16 training samples, 8 a step: every sample recurs, so AQ-SGD
    sends deltas against its memories from step 3 on."""
    compression.set_fused(False)
    data = models.SequenceDataset(models.read_corpus(models.default_corpus_path()), 32, max_train=16)
    workers = _grid()
    _run(workers, data, range(1, K + 1))
    snapshot = {cell: _checkpointed({"params": workers[cell[0]][cell[1]].state_dict(),
                                     "codec": workers[cell[0]][cell[1]].codec_state()}) for cell in CELLS}
    after = _run(workers, data, range(K + 1, K + M + 1))
    yield data, snapshot, after
    compression.set_fused(True)


def test_codec_state_holds_every_carried_piece_and_survives_weights_only_loading(history):
    _, snapshot, _ = history
    stage0, stage1 = snapshot[0, 0]["codec"], snapshot[1, 0]["codec"]
    assert stage0["gradient"]["sent"].keys() == {"s0r1"} and stage0["gradient"]["owned"].keys() == {"s0r0"}
    assert stage0["outgoing"]["delta"]["held"] and stage1["incoming"]["delta"]["held"]
    sender, receiver = stage0["outgoing"]["delta"], stage1["incoming"]["delta"]
    assert sender["order"] == receiver["order"] and sender["updates"] == receiver["updates"]
    assert all(torch.equal(a, b) for a, b in zip(sender["memory"], receiver["memory"], strict=True))
    assert not stage0["incoming"]["delta"]["held"] and not stage1["outgoing"]["delta"]["held"]


def test_codec_state_is_a_copy(history):
    data, _, _ = history
    workers = _grid()
    _step(workers, data, 1)
    states = [workers[0][0].codec_state() for _ in range(2)]  # both alive: no storage reused between them
    ptrs = [{t.untyped_storage().data_ptr() for t in _tensors(state)} for state in states]
    assert ptrs[0] and not ptrs[0] & ptrs[1], "codec_state() must not alias the live residuals or memories"


def test_restored_grid_repeats_the_original_bitwise(history):
    data, snapshot, (losses, checksums) = history
    fresh = _grid()
    for s, r in CELLS:
        fresh[s][r].load_state_dict(snapshot[s, r]["params"])
        fresh[s][r].load_codec_state(snapshot[s, r]["codec"])
    assert _run(fresh, data, range(K + 1, K + M + 1)) == (losses, checksums)


def test_without_codec_state_the_resumed_run_differs(history):
    data, snapshot, (losses, _) = history
    fresh = _grid()
    for s, r in CELLS:
        fresh[s][r].load_state_dict(snapshot[s, r]["params"])
    got, _ = _run(fresh, data, range(K + 1, K + M + 1))
    assert got != losses


@pytest.mark.parametrize(("build", "match"), [
    (lambda hub: _executor(hub, 1, 0, codecs=Codecs("q4", forward_delta=True)), "codecs"),
    (lambda hub: _executor(hub, 1, 0, codecs=Codecs()), "codecs"),
    (lambda hub: _executor(hub, 1, 0, capacity=32), "capacity"),
    (lambda hub: _executor(hub, 1, 0, prev="s0r1"), "layout"),
    (lambda hub: _executor(hub, 1, 0, group=["s1r0", "s1r2"]), "group"),
    (lambda hub: _executor(hub, 1, 1, prev="s0r0"), "peer"),  # same neighbours, the other seat
], ids=["forward-codec", "no-delta", "capacity", "neighbour", "group", "other-replica"])
def test_a_codec_state_of_another_executor_is_refused(history, build, match):
    _, snapshot, _ = history
    worker = build(InProcessHub())
    before = worker.codec_state()
    with pytest.raises(ValueError, match=match):
        worker.load_codec_state(snapshot[1, 0]["codec"])
    assert _same(worker.codec_state(), before)


def test_residuals_for_peers_outside_the_group_are_refused(history):
    _, snapshot, _ = history
    state = _checkpointed(snapshot[1, 0]["codec"])
    state["gradient"]["sent"]["s1r7"] = state["gradient"]["sent"].pop("s1r1")
    with pytest.raises(ValueError, match=r"peers \['s1r7'\]"):
        _executor(InProcessHub(), 1, 0).load_codec_state(state)


def test_a_failed_load_changes_nothing(history):
    """The residuals load before the memories: a bad memory must not leave them replaced."""
    data, snapshot, _ = history
    workers = _grid()
    _step(workers, data, 1)
    worker = workers[1][0]
    before = worker.codec_state()
    state = _checkpointed(snapshot[1, 0]["codec"])
    state["incoming"]["delta"]["updates"].pop()
    with pytest.raises(ValueError, match="inconsistent"):
        worker.load_codec_state(state)
    assert _same(worker.codec_state(), before) and not _same(before, snapshot[1, 0]["codec"])


def test_a_pending_step_is_refused_both_ways(history):
    data, snapshot, _ = history
    workers = _grid()
    _step(workers, data, 1, apply=False)
    prepared = workers[0][0].codec_state()
    assert prepared["pending_step"] == 1
    with pytest.raises(ValueError, match="step 1 is prepared but not applied in that state"):
        _executor(InProcessHub(), 0, 0).load_codec_state(_checkpointed(prepared))
    with pytest.raises(ValueError, match="step 1 is prepared but not applied here"):
        workers[0][0].load_codec_state(snapshot[0, 0]["codec"])


def _same(a, b):
    """Equal trees, tensors compared by value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else []
    return [t for item in items for t in _tensors(item)]
