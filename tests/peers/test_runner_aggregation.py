"""A peer's runner takes the plan's aggregation rule and its own fault injector, and reports suspects."""
from __future__ import annotations

import threading

import pytest

import models
from peers.daemon.stage_runner import StageRunner
from peers.daemon.timeouts import derive_timeouts
from peers.dataplane.transport import InProcessHub
from peers.protocol import Codecs, PlanChange, PlanReason, PlanRecord, SourceKind, StateSource, TrainingSpec
from tests.threads import run_concurrently

pytestmark = pytest.mark.usefixtures("eager_codecs")

NAMES = ["a", "b", "c"]  # one stage, three replicas


def _plan(aggregate):
    timeouts = derive_timeouts(message_bytes=1e5, bandwidth_gbps=1.0, latency_ms=0.1, step_flops=1e9, tflops=0.1,
                               stages=1, micro_batches=1)
    return PlanRecord(version=1, start_step=1, grid=[NAMES], layers=[4],
                      addresses=dict.fromkeys(NAMES, "tcp://127.0.0.1:1"),
                      sources=dict.fromkeys(NAMES, StateSource(SourceKind.INIT)), codecs=Codecs(),
                      reason=PlanReason(PlanChange.FIRST, "test"),
                      training=TrainingSpec(batch=3, micro_batches=1, steps=4, aggregate=aggregate, timeouts=timeouts))


def test_the_plans_rule_outvotes_a_nan_attacker_and_the_runner_names_it():
    data = models.SequenceDataset(models.read_corpus(models.default_corpus_path()), 32, max_train=16)
    hub, abort = InProcessHub(), threading.Event()
    runners = {n: StageRunner(_plan("centered-clip"), n, hub.endpoint(n), data, None, "cpu", abort, attack="nan@1")
               for n in NAMES}
    assert [runners[n].executor.averager.attack is not None for n in NAMES] == [False, True, False]
    _, errors = run_concurrently([lambda n=n: runners[n].prepare(1) for n in NAMES], timeout=120, what="a runner")
    assert not errors
    for name in NAMES:
        runners[name].apply(1)
    assert len({runners[n].checksum() for n in NAMES}) == 1
    assert runners["a"].suspects() == {"b": 1} and runners["c"].suspects() == {"b": 1}
    assert runners["b"].suspects() == {}
