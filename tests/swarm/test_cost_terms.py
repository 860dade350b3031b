"""What the live swarm pays beyond compute and the wire: the codecs' CPU time, the commit round trip,
and the all-reduce's overlap with the last backward pass, in `full` and in the simulator alike.

Scenarios are those of test_cost_formulas (the tiny 2 x 2 swarm over sites A and B), plus a model
of d_model 128 whose stages hold about 400k parameters: two all-reduce buckets of 2^18 values.
"""
import copy
import math

import numpy as np
import pytest

from compression import frame_size
from models import GPTConfig, forward_flops_per_token, stage_parameters
from peers.protocol import BUCKET_VALUES
from swarm.scheduler import Scenario, plan
from swarm.scheduler.baselines import lower_bound
from swarm.scheduler.cost import FullCost
from swarm.scheduler.synthetic import volunteer_scenario
from swarm.scheduler.workload import Workload
from swarm.simulator import simulate_iteration
from tests.swarm.test_cost_formulas import BACKWARD, BOUNDARY, CONFIG, GRID, LAYERS, P0, TINY, fp16, full_by_hand, tiny

RATE = 1e-6  # Gvalues/s: 1 ms a value, so the tiny swarm's codecs cost about what its compute does
KAPPA = 1e-3


def with_codecs(rate: float | None = RATE, **changes) -> Scenario:
    data = copy.deepcopy(TINY)
    if rate is not None:
        data["devices"] = [dict(d, codec_gvalues=rate) for d in data["devices"]]
    data.update(changes)
    return Scenario.from_dict(data)


def codecs_by_hand() -> float:
    """The tiny swarm's iteration with every device coding at RATE, composed message by message."""
    f0, f1 = (2 * forward_flops_per_token(CONFIG, [1, 1], s) / 1000 for s in (0, 1))
    frame = BOUNDARY * KAPPA           # each stage has one boundary: it codes one frame per pass
    f0, f1, b0, b1 = f0 + frame, f1 + frame, BACKWARD * f0 + frame, BACKWARD * f1 + frame
    chunk = math.ceil(P0 / 2)          # both stages hold 284 parameters: one bucket, chunks of 142 values
    shares = chunk * KAPPA             # the last backward pass encodes the one share it sends
    hop, lat = fp16(BOUNDARY) / 1e9, 0.001
    t_fwd = f0 + f1 + hop + lat + max(f0, f1, hop)
    first = t_fwd + b1 + hop + lat + b0                    # stage 0's first backward pass ends
    sent1 = t_fwd + 2 * b1 + shares + hop                  # stage 1's last gradient is down
    done0 = max(sent1 + lat, first) + b0 + shares
    send, a = fp16(chunk) / 1e8, 0.010                     # one frame over the A-B link, per phase
    both = 2 * chunk * KAPPA                               # two chunks' codec passes
    # shares out, the owner decodes the other's share and encodes its aggregate, broadcasts, each decodes both
    return done0 + send + a + both + send + a + both


def test_codecs_cost_every_frame_on_the_devices_compute_by_hand():
    hand = codecs_by_hand()
    assert FullCost(with_codecs(), 2, 2).breakdown(GRID, LAYERS).iteration_s == pytest.approx(hand, rel=1e-12)
    assert simulate_iteration(with_codecs(), GRID, LAYERS).seconds == pytest.approx(hand, rel=1e-9)
    # without a rate the codecs cost nothing: the model of test_cost_formulas, exactly
    assert FullCost(with_codecs(None), 2, 2).breakdown(GRID, LAYERS).iteration_s == pytest.approx(
        full_by_hand()["iteration"], rel=1e-12)


def test_codec_time_grows_with_the_values_a_message_carries():
    def added(seq_len: int) -> float:
        model = dict(TINY["model"], seq_len=seq_len)
        priced, free = (FullCost(with_codecs(rate, model=model), 2, 2).breakdown(GRID, LAYERS).iteration_s
                        for rate in (RATE, None))
        return priced - free

    # twice the tokens a micro-batch: twice the values at each boundary, the same gradient
    assert added(4) > added(2) + 4 * BOUNDARY * KAPPA
    # a slower codec costs more, the same values
    slow, fast = (FullCost(with_codecs(rate), 2, 2).score(GRID, LAYERS) for rate in (RATE / 2, RATE))
    assert slow > fast


def test_the_commit_round_trip_is_added_once_per_iteration():
    control = {"commit_s": 0.25}
    for codec_rate in (None, RATE):
        plain = FullCost(with_codecs(codec_rate), 2, 2).breakdown(GRID, LAYERS)
        paid = FullCost(with_codecs(codec_rate, control=control), 2, 2).breakdown(GRID, LAYERS)
        assert paid.iteration_s - plain.iteration_s == pytest.approx(0.25, rel=1e-12)
        assert paid.control_s == 0.25 and plain.control_s == 0.0
        parts = paid.compute_s + paid.pipeline_s + paid.data_parallel_s + paid.control_s
        assert parts == pytest.approx(paid.iteration_s, rel=1e-12)
        before, after = (simulate_iteration(with_codecs(codec_rate, **extra), GRID, LAYERS).seconds
                         for extra in ({}, {"control": control}))
        assert after - before == pytest.approx(0.25, rel=1e-9)


# --- the all-reduce overlapping backward --------------------------------------------------------

WIDE = {"layers": 2, "d_model": 128, "heads": 1, "seq_len": 2, "vocab": 8}
WIDE_CONFIG = GPTConfig(layers=2, d_model=128, heads=1, context=2, vocab=8)


def one_stage(tflops: float) -> Scenario:
    """Both layers on one stage, replicated on a0 and b0 across the A-B link (1e8 B/s, 10 ms)."""
    devices = [{"id": i, "site": i[0].upper(), "tflops": tflops, "memory_gb": 1.0} for i in ("a0", "b0")]
    return tiny(devices=devices, model=WIDE, parallelism={"stages": 1, "replicas": 2})


@pytest.mark.parametrize("tflops", [1e-4, 1e-3, 1e-2])  # backward 47 ms, 4.7 ms, 0.47 ms; a phase's frame 4 ms
def test_two_buckets_overlap_the_last_backward_pass_by_the_predicted_amount(tflops, monkeypatch):
    params = stage_parameters(WIDE_CONFIG, [2], 0)
    assert math.ceil(params / BUCKET_VALUES) == 2
    f = 2 * forward_flops_per_token(WIDE_CONFIG, [2], 0) / (tflops * 1e12)
    b = BACKWARD * f
    end = 2 * f + 2 * b                        # M = 2 micro-batches, one stage: its last backward pass ends
    send, a = fp16(math.ceil(params / 2)) / 1e8, 0.010
    grid, layers = np.array([[0, 1]]), np.array([2])
    overlapped = FullCost(one_stage(tflops), 1, 2).score(grid, layers)
    # bucket 1 (half the gradient) is ready halfway through the last backward pass and on the wire at
    # once; bucket 2 waits for the pass's end. So the uplink sends up to half its frame early.
    assert overlapped == pytest.approx(end + 2 * (send + a) - min(send, b) / 2, rel=1e-12)
    assert overlapped >= end - b / 2 + 2 * (send + a)   # never before the all-reduce alone, from bucket 1 on
    assert simulate_iteration(one_stage(tflops), grid, layers).seconds == pytest.approx(overlapped, rel=1e-9)
    monkeypatch.setattr("swarm.scheduler.workload.BUCKET_VALUES", params)   # one bucket: no overlap
    whole = FullCost(one_stage(tflops), 1, 2).score(grid, layers)
    assert whole == pytest.approx(end + 2 * (send + a), rel=1e-12)
    assert whole - overlapped == pytest.approx(min(send, b) / 2, rel=1e-9)


def test_the_lower_bound_allows_for_the_overlap_and_counts_the_commit():
    # both replicas inside site A, the best link there is: with the compute split evenly, the bound's
    # compute is exact, and the overlap hides part of what a reduce-scatter on that link would cost
    devices = [{"id": i, "tflops": 1e-3, "memory_gb": 1.0, "site": "A"} for i in ("a0", "a1")]
    scenario = tiny(devices=devices, model=WIDE, parallelism={"stages": 1, "replicas": 2}, control={"commit_s": 0.5})
    model = FullCost(scenario, 1, 2)
    score = model.score(np.array([[0, 1]]), np.array([2]))
    assert score - 0.5 < lower_bound(model) <= score


@pytest.mark.parametrize("codec_rate", [None, 1e-3])
def test_the_pipelines_last_gradient_keeps_the_uplink_first(codec_rate, monkeypatch):
    # 2 x 2 of a 4-layer wide model split 1 + 3: stage 1's all-reduce (three buckets, 6 ms a phase over the
    # A-B link) ends the iteration, and its shares share an uplink with its gradients down the pipeline
    # (0.5 ms each inside a site); its last backward pass (0.7 ms) ends long before bucket 1 is out
    devices = [dict(d, tflops=1e-2) for d in TINY["devices"]]
    sites = {site: {"bandwidth_gbps": 0.008, "latency_ms": 1.0} for site in "AB"}
    scenario = with_codecs(codec_rate, devices=devices, sites=sites, model=dict(WIDE, layers=4),
                           control={"commit_s": 0.002})
    layers = np.array([1, 3])
    assert list(Workload(scenario, 2, 2).buckets(layers)) == [1, 3]

    def predicted_and_simulated():
        predicted = FullCost(scenario, 2, 2).breakdown(GRID, layers)
        return predicted, simulate_iteration(scenario, GRID, layers).seconds

    overlapped, simulated = predicted_and_simulated()
    assert simulated == pytest.approx(overlapped.iteration_s, rel=1e-9)
    monkeypatch.setattr("swarm.scheduler.workload.BUCKET_VALUES", 2**30)   # one bucket: shares only after the pass
    whole, simulated = predicted_and_simulated()
    assert simulated == pytest.approx(whole.iteration_s, rel=1e-9)
    # bucket 1 went out early, yet the last gradient down was never held up behind it: the pipeline ends
    # when it did without overlap, and only the all-reduce after it got shorter
    assert overlapped.compute_s + overlapped.pipeline_s == pytest.approx(whole.compute_s + whole.pipeline_s,
                                                                         rel=1e-12)
    assert overlapped.iteration_s < whole.iteration_s


def test_simulator_agrees_with_full_on_a_swarm_with_codec_rates_and_a_commit():
    scenario = volunteer_scenario(48, 8, seed=2, parallelism={"stages": 6, "replicas": 8})
    rates = np.random.default_rng(0).uniform(0.05, 2.0, len(scenario.devices))
    data = scenario.to_dict()
    data["devices"] = [dict(d, codec_gvalues=float(rate)) for d, rate in zip(data["devices"], rates, strict=True)]
    data["control"] = {"commit_s": 0.05}
    priced = Scenario.from_dict(data)
    planned = plan(priced, "full", seed=0, time_limit=120)
    assert planned.predicted["control_s"] == 0.05
    simulated = simulate_iteration(priced, planned.indices(priced), np.array(planned.layers)).seconds
    assert simulated == pytest.approx(planned.predicted["iteration_s"], rel=0.10)


def test_frame_bytes_do_not_change_codec_time():
    # codecs are priced per value: q3 and fp16 activations cost the same CPU, fewer bytes on the wire
    narrow, wide = (FullCost(with_codecs(compression=bits), 2, 2).breakdown(GRID, LAYERS)
                    for bits in ({"forward_bits": 3}, {"forward_bits": 16}))
    assert narrow.compute_s == wide.compute_s and narrow.compute_s > FullCost(tiny(), 2, 2).breakdown(
        GRID, LAYERS).compute_s
    assert frame_size("q3", BOUNDARY) < fp16(BOUNDARY)
