"""A peer measures its speed on the model it trains and its codecs' speed, as its record announces them."""
import itertools

import pytest

from models import get_config, layer_forward_flops_per_token
from peers import profiling
from peers.daemon.joining import swarm_job
from peers.daemon.timeouts import derive_timeouts
from peers.protocol import (
    Codecs,
    ControlRecord,
    PeerRecord,
    PlanChange,
    PlanReason,
    PlanRecord,
    SourceKind,
    StateSource,
    TrainingSpec,
)

TIMEOUTS = derive_timeouts(message_bytes=1e5, bandwidth_gbps=1.0, latency_ms=0.1, step_flops=1e9, tflops=0.1,
                           stages=1, micro_batches=2)


def test_the_codec_rate_counts_an_encode_and_a_decode_per_value(monkeypatch):
    ticks = itertools.count(step=0.004)   # every clock reading 4 ms after the last: each round takes 4 ms
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(ticks))
    assert profiling.measure_codec("none", values=2**16, runs=3) == pytest.approx(round(2 * 2**16 / 0.004 / 1e9, 4))


def test_a_measured_rate_is_one_a_record_accepts():
    rate = profiling.measure_codec("q4", values=4096, runs=3)  # below the compiled kernels: no compilation
    record = PeerRecord(name="p", address="tcp://127.0.0.1:1", device="cpu", tflops=1.0, memory_gb=1.0,
                        codec_gvalues=rate)
    assert PeerRecord.from_wire(record.to_wire()).codec_gvalues == rate > 0


def test_the_model_speed_counts_a_block_forward_and_backward_as_the_cost_model_does(monkeypatch):
    ticks = itertools.count(step=0.01)   # every clock reading 10 ms after the last
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(ticks))
    config = get_config("tiny")
    # a burst reads the clock at its start and after each pass: one 10 ms pass reaches 5 ms
    flops = 3 * layer_forward_flops_per_token(config) * 2 * config.context
    assert profiling.measure_model(config, 2, seconds=0.005, tries=1) == pytest.approx(round(flops / 0.01 / 1e12, 4))


def test_a_peer_times_the_model_and_codecs_of_the_plan_else_of_the_control_record():
    control = ControlRecord(plan_version=0, committed_step=0, committed_version=0, total_steps=5,
                            training=TrainingSpec(model="small", batch=16), codecs=Codecs(forward="none"))
    assert ControlRecord.from_wire(control.to_wire()) == control
    assert swarm_job(None, control) == (control.training, control.codecs)
    plan = PlanRecord(version=1, start_step=1, grid=[["a"]], layers=[4], addresses={"a": "tcp://127.0.0.1:1"},
                      sources={"a": StateSource(SourceKind.INIT)}, codecs=Codecs(),
                      training=TrainingSpec(timeouts=TIMEOUTS), reason=PlanReason(PlanChange.FIRST, "test"))
    assert swarm_job(plan, control) == (plan.training, plan.codecs)
