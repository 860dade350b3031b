"""A peer's cell under one plan: two-phase steps, state sources, and abortable, plan-scoped receives."""
from __future__ import annotations

import threading
import time

import pytest

import models
from peers.daemon.stage_runner import PlanAborted, PlanLink, StageRunner
from peers.daemon.timeouts import derive_timeouts
from peers.dataplane.transport import InProcessHub, Message, PeerTimeout
from peers.dataplane.wire import ACT_KIND
from peers.protocol import Codecs, PlanChange, PlanReason, PlanRecord, SourceKind, StateSource, TrainingSpec

NAMES = ["a", "b", "c", "d"]  # grid [[a, b], [c, d]]: stage 0 = a, b; stage 1 = c, d


pytestmark = pytest.mark.usefixtures("eager_codecs")


@pytest.fixture(scope="module")
def data():
    return models.SequenceDataset(models.read_corpus(models.default_corpus_path()), 128, max_train=64)


def _plan(version=1, start_step=1, sources=SourceKind.INIT):
    timeouts = derive_timeouts(message_bytes=1e5, bandwidth_gbps=1.0, latency_ms=0.1, step_flops=1e9, tflops=0.1,
                               stages=2, micro_batches=2)
    return PlanRecord(version=version, start_step=start_step, grid=[["a", "b"], ["c", "d"]], layers=[2, 2],
                      addresses=dict.fromkeys(NAMES, "tcp://127.0.0.1:1"),
                      sources=(dict.fromkeys(NAMES, StateSource(sources)) if isinstance(sources, SourceKind)
                               else sources),
                      codecs=Codecs(), reason=PlanReason(PlanChange.FIRST, "test"),
                      training=TrainingSpec(batch=4, micro_batches=2, steps=10, timeouts=timeouts))


def _runners(data, plan, hub=None, previous=None, abort=None):
    hub = hub or InProcessHub()
    abort = abort or threading.Event()
    endpoints = {n: hub.endpoint(n) for n in NAMES} if previous is None else previous["endpoints"]
    runners = {n: StageRunner(plan, n, endpoints[n], data, previous and previous[n], "cpu", abort) for n in NAMES}
    return {**runners, "endpoints": endpoints, "hub": hub, "abort": abort}


def _prepare_all(runners, step):
    errors = []

    def work(name):
        try:
            runners[name].prepare(step)
        except Exception as error:  # collected and re-raised by the test
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in NAMES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def test_a_prepared_step_changes_nothing_until_it_is_applied(data):
    runners = _runners(data, _plan())
    before = {n: runners[n].checksum() for n in NAMES}
    _prepare_all(runners, 1)
    assert {n: runners[n].checksum() for n in NAMES} == before
    for name in NAMES:
        runners[name].apply(1)
    after = {n: runners[n].checksum() for n in NAMES}
    assert after["a"] == after["b"] != before["a"] and after["c"] == after["d"] != before["c"]
    assert runners["a"].applied_step == 1


def test_a_discarded_step_leaves_parameters_and_optimizer_untouched(data):
    runners = _runners(data, _plan())
    before = runners["c"].checksum()
    _prepare_all(runners, 1)
    for name in NAMES:
        runners[name].discard()
    assert runners["c"].checksum() == before
    with pytest.raises(RuntimeError, match="the prepared step is None"):
        runners["c"].apply(1)


def test_keep_carries_the_state_into_the_next_plan(data):
    first = _runners(data, _plan())
    _prepare_all(first, 1)
    for name in NAMES:
        first[name].apply(1)
    second = _runners(data, _plan(version=2, start_step=2, sources=SourceKind.KEEP), previous=first)
    assert second["c"].checksum() == first["c"].checksum() and second["c"].applied_step == 1
    with pytest.raises(RuntimeError, match="does not hold it"):
        StageRunner(_plan(version=3, start_step=5, sources=SourceKind.KEEP), "c", first["endpoints"]["c"], data,
                    first["c"], "cpu", threading.Event())


def test_a_plan_change_interrupts_a_waiting_step_at_once(data):
    runners = _runners(data, _plan())
    started = time.monotonic()
    threading.Timer(0.5, runners["abort"].set).start()
    with pytest.raises(PlanAborted):
        runners["c"].prepare(1)  # stage 1 waits for activations that never come
    assert time.monotonic() - started < 5  # not the 10 s message timeout


def _joined(plan, version, start_step, change=PlanChange.JOINED):
    """`plan` republished as `version` from `start_step`, everyone keeping their cell, a newcomer standby."""
    return PlanRecord.from_wire({**plan.to_wire(), "version": version, "start_step": start_step, "standby": ["e"],
                                 "sources": dict.fromkeys(NAMES, {"kind": "keep"}),
                                 "reason": {"change": change.value, "text": "e joined", "joined": ["e"]}})


def test_a_standby_joining_keeps_every_runner_and_its_codec_state(data):
    first = _plan()
    runners = _runners(data, first)
    for step in (1, 2):
        _prepare_all(runners, step)
        for name in NAMES:
            runners[name].apply(step)
    executors = {n: runners[n].executor for n in NAMES}
    feedback = {n: runners[n].executor.averager._sender_feedback for n in NAMES}
    residuals = {n: {k: v.clone() for k, v in feedback[n]._residuals.items()} for n in NAMES}
    joined = _joined(first, 2, 3)
    assert all(runners[n].continues(joined, n) for n in NAMES)
    abort = threading.Event()
    for name in NAMES:
        runners[name].adopt(joined, abort)
    assert all(runners[n].executor is executors[n] for n in NAMES)
    assert all(runners[n].executor.averager._sender_feedback is feedback[n] for n in NAMES)
    assert all(set(feedback[n]._residuals) == set(residuals[n]) and all(
        (feedback[n]._residuals[k] == v).all() for k, v in residuals[n].items()) for n in NAMES)
    _prepare_all(runners, 3)  # and training goes on under the new plan's version
    assert runners["a"].link._version == 2


def test_a_repair_or_a_changed_grid_rebuilds_the_runners(data):
    first = _plan()
    runners = _runners(data, first)
    _prepare_all(runners, 1)
    for name in NAMES:
        runners[name].apply(1)
    assert not runners["a"].continues(_joined(first, 2, 2, PlanChange.REPAIRED), "a")
    assert not runners["a"].continues(_joined(first, 2, 3), "a")  # not at the plan's start step
    swapped = PlanRecord.from_wire({**_joined(first, 2, 2).to_wire(), "grid": [["b", "a"], ["c", "d"]]})
    assert not runners["a"].continues(swapped, "a")


def test_a_first_wait_outlasts_a_neighbours_state_load_and_later_waits_do_not():
    """A neighbour loading its state sends its first activation late; that is no timeout in the first step."""
    hub = InProcessHub()
    sender, receiver = hub.endpoint("loader"), hub.endpoint("waiter")
    link = PlanLink(receiver, 3, threading.Event(), timeout=0.05, loading=1.0)
    late = threading.Timer(0.5, lambda: sender.send("waiter", Message(ACT_KIND, 1, 0, b"x", plan_version=3)))
    late.start()
    assert link.recv("loader", ACT_KIND, 1, 0).payload == b"x"  # 0.05 x 3 + 1.0 s
    link.warm = True
    with pytest.raises(PeerTimeout, match="within 0 s"):
        link.recv("loader", ACT_KIND, 2, 0)  # 0.05 s once warm
    late.join()
