"""A peer measures its speed on the model it trains and its codecs' speed, as its record announces them."""
import itertools

import pytest

from models import get_config, layer_forward_flops_per_token
from peers import profiling
from peers.daemon import speed
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


def test_the_model_efficiency_counts_a_block_as_the_cost_model_does_against_matmul_flops(monkeypatch):
    ticks = itertools.count(step=0.01)   # every clock reading 10 ms after the last: each call takes 10 ms
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(ticks))
    config = get_config("tiny")
    block = 3 * layer_forward_flops_per_token(config) * 2 * config.context
    assert profiling.model_efficiency(config, 2, seconds=0.0, rounds=1) == pytest.approx(block / (4 * 2 * 512**3))


def test_a_neighbour_taking_the_cpu_for_a_while_does_not_move_the_efficiency(monkeypatch):
    """Block passes take 20 ms and matmul calls 10 ms, but 3x that during the second round."""
    calls = iter([0.02, 0.01, 0.06, 0.03, 0.02, 0.01])
    monkeypatch.setattr(profiling, "_timed", lambda work, device: next(calls))
    config = get_config("tiny")
    block = 3 * layer_forward_flops_per_token(config) * 1 * config.context
    expected = (block / 0.02) / (4 * 2 * 512**3 / 0.01)
    assert profiling.model_efficiency(config, 1, seconds=0.0, rounds=3) == pytest.approx(expected)


def test_a_peer_measures_the_efficiency_once_and_scales_its_matmul_speed_by_it(monkeypatch, tmp_path):
    measured = []
    monkeypatch.setattr(speed, "model_efficiency", lambda config, sequences, device, dtype: measured.append(
        (config.name, sequences, dtype)) or 0.5)
    events: list[str] = []
    training = TrainingSpec(model="tiny", batch=8, micro_batches=2)
    assert speed.measure_speed(training, "cpu", 0.08, tmp_path, events.append, "p1") == 0.04
    assert speed.measure_speed(training, "cpu", 0.08, tmp_path, events.append, "p2") == 0.04
    assert measured == [("tiny", 2, "fp32")]  # the second start found it in the cache
    assert "p2: 0.0400 TFLOPS on tiny's blocks" in events[1]
    speed.measure_speed(TrainingSpec(model="tiny", batch=8, micro_batches=2, dtype="bf16"), "cpu", 0.08, tmp_path,
                        events.append, "p3")
    assert measured[-1] == ("tiny", 2, "bf16")  # another key: measured anew
    for entry in (tmp_path / "speed").glob("*.json"):
        entry.write_text("{not json")
    speed.measure_speed(training, "cpu", 0.08, tmp_path, events.append, "p4")
    assert len(measured) == 3  # a damaged cache entry is measured again, never trusted
    unwritable = tmp_path / "file"
    unwritable.write_text("")  # a cache "directory" that is a file: measured, not kept, no crash
    assert speed.measure_speed(training, "cpu", 0.08, unwritable, events.append, "p5") == 0.04
    assert len(measured) == 4


def test_a_peer_times_the_model_and_codecs_of_the_plan_else_of_the_control_record():
    control = ControlRecord(plan_version=0, committed_step=0, committed_version=0, total_steps=5,
                            training=TrainingSpec(model="small", batch=16), codecs=Codecs(forward="none"))
    assert ControlRecord.from_wire(control.to_wire()) == control
    assert swarm_job(None, control) == (control.training, control.codecs)
    plan = PlanRecord(version=1, start_step=1, grid=[["a"]], layers=[4], addresses={"a": "tcp://127.0.0.1:1"},
                      sources={"a": StateSource(SourceKind.INIT)}, codecs=Codecs(),
                      training=TrainingSpec(timeouts=TIMEOUTS), reason=PlanReason(PlanChange.FIRST, "test"))
    assert swarm_job(plan, control) == (plan.training, plan.codecs)
