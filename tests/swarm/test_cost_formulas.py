"""Each cost formula on a tiny swarm, composed by hand from the model's and the codecs' sizes.

The swarm: sites A and B, two devices each; inside a site 8 Gbps (1e9 B/s) and 1 ms, between the
sites 0.8 Gbps (1e8 B/s) and 10 ms. The model: 2 layers, d = 4, seq 2, vocab 8. Global batch 4,
micro 1, grid 2 x 2: M = 4 / (1 * 2) = 2 micro-batches per pipeline; a boundary carries
1 * 2 * 4 = 8 values. Parameter counts come from `models.stages` and bytes from
`compression.frame_size` (the frames the peers send); the tests check how the cost models
compose them (alpha + bytes / beta, the flow shop, the all-reduce).
"""
import copy
import math

import numpy as np
import pytest

from compression import frame_size
from models import BACKWARD_FLOPS_FACTOR, GPTConfig, forward_flops_per_token, layer_parameters, stage_parameters
from swarm.scheduler import Scenario
from swarm.scheduler.cost import INFEASIBLE, DtfmCost, FullCost
from swarm.scheduler.matching import bottleneck_assignment, open_path_order
from swarm.scheduler.network import GBPS
from swarm.scheduler.workload import Workload

TINY = {
    "name": "tiny",
    "devices": [{"id": i, "site": i[0].upper(), "tflops": 1e-9, "memory_gb": 1.0} for i in ("a0", "a1", "b0", "b1")],
    "sites": {"A": {"bandwidth_gbps": 8.0, "latency_ms": 1.0}, "B": {"bandwidth_gbps": 8.0, "latency_ms": 1.0}},
    "links": [{"between": ["A", "B"], "bandwidth_gbps": 0.8, "latency_ms": 10.0}],
    "model": {"layers": 2, "d_model": 4, "heads": 1, "seq_len": 2, "vocab": 8},
    "batch": {"global_sequences": 4, "micro_sequences": 1},
    "compression": {"forward_bits": 16, "backward_bits": 16, "gradient_bits": 16},
    "parallelism": {"stages": 2, "replicas": 2},
}
# stage 0 = [a0, b0] (a data-parallel group across the slow link), pipelines a0->a1 and b0->b1
GRID = np.array([[0, 2], [1, 3]])
LAYERS = np.array([1, 1])

CONFIG = GPTConfig(layers=2, d_model=4, heads=1, context=2, vocab=8)
P0, P1 = (stage_parameters(CONFIG, [1, 1], s) for s in (0, 1))
BOUNDARY = 8          # values of one micro-batch at a stage boundary
BACKWARD = BACKWARD_FLOPS_FACTOR + 1   # the gradient, then one recomputed forward pass


def fp16(values: int) -> int:
    """Bytes of one fp16 frame of `values` values (DT-FM's volumes, and the tiny scenario's codec)."""
    return frame_size("fp16", values)


def full_by_hand() -> dict[str, float]:
    """The full model's iteration of GRID, composed term by term (shared with the simulator's test)."""
    # forward FLOPs of a micro-batch (2 tokens) at 1e-9 TFLOPS = 1000 FLOP/s
    f0, f1 = (2 * forward_flops_per_token(CONFIG, [1, 1], s) / 1000 for s in (0, 1))
    b0, b1 = BACKWARD * f0, BACKWARD * f1
    hop, lat, m = fp16(BOUNDARY) / 1e9, 0.001, 2   # one frame per micro-batch, inside a site
    t_fwd = f0 + f1 + hop + lat + (m - 1) * max(f0, f1, hop)
    done0 = t_fwd + b1 + b0 + hop + lat + (m - 1) * max(b0, b1, hop)
    # all-reduce: two frames of half the gradient each (one per phase), one peer across the A-B link;
    # stage 0 ends the iteration: its backward passes finish last and P0 == P1 (284 parameters)
    assert P0 == P1 == 284
    allreduce = 2 * (fp16(math.ceil(P0 / 2)) / 1e8 + 0.010)
    compute = f0 + f1 + f1 + b0 + b1 + b1
    return {"iteration": done0 + allreduce, "compute": compute, "allreduce": allreduce}


def tiny(**changes) -> Scenario:
    data = copy.deepcopy(TINY)
    data.update(changes)
    return Scenario.from_dict(data)


def test_network_caps_bandwidth_by_both_uplinks():
    devices = copy.deepcopy(TINY["devices"])
    devices[0]["uplink_gbps"] = 0.08
    net = tiny(devices=devices).network
    assert net.bandwidth(0, 1) == pytest.approx(0.08 * GBPS)      # a0's uplink, not the site's 8 Gbps
    assert net.bandwidth(1, 0) == pytest.approx(0.08 * GBPS)
    assert net.bandwidth(1, 2) == pytest.approx(1e8)               # a1 -> b0: the A-B link
    assert net.latency(1, 2) == pytest.approx(0.010)
    assert net.latency(2, 3) == pytest.approx(0.001)


def test_channel_bytes_are_the_codecs_frames():
    bits = {"forward_bits": 3, "backward_bits": 6, "gradient_bits": 4}
    work = Workload(tiny(compression=bits), 2, 2)
    # a micro-batch crosses a boundary as one frame; the gradient travels in chunks of 1/R
    assert work.activation_bytes("forward") == frame_size("q3", BOUNDARY)
    assert work.activation_bytes("backward") == frame_size("q6", BOUNDARY)
    assert list(work.gradient_chunk_bytes(LAYERS)) == [frame_size("q4", math.ceil(p / 2)) for p in (P0, P1)]
    # 16 bits is fp16 and 32 the raw float32 frame; a channel left out is fp16
    assert Workload(tiny(compression={"forward_bits": 32}), 2, 2).codecs == {
        "forward": "none", "backward": "fp16", "gradient": "fp16"}
    # codec names price exactly like the bit-widths they stand for, and any codec can be named
    named = Workload(tiny(compression={"forward": "q3", "backward": "q6", "gradient": "q4"}), 2, 2)
    assert named.activation_bytes("forward") == work.activation_bytes("forward")
    assert list(named.gradient_chunk_bytes(LAYERS)) == list(work.gradient_chunk_bytes(LAYERS))
    sparse = Workload(tiny(compression={"gradient": "cocktail"}), 2, 2)
    assert list(sparse.gradient_chunk_bytes(LAYERS)) == [frame_size("cocktail", math.ceil(p / 2)) for p in (P0, P1)]


def test_workload_parameters_flops_and_memory():
    work = Workload(tiny(), 2, 2)
    assert work.micro_batches == 2
    # stage 0: a layer and the token and position embeddings; the last stage: a layer, the final
    # norm and the untied head
    assert P0 == layer_parameters(CONFIG) + (8 + 2) * 4 and P1 == layer_parameters(CONFIG) + 2 * 4 + 8 * 4
    assert list(work.params(LAYERS)) == [P0, P1]
    assert list(Workload(tiny(), 1, 2).params(np.array([2]))) == [stage_parameters(CONFIG, [2], 0)]
    # forward FLOPs per micro-batch: 2 tokens * (24 * 16 + 4 * 2 * 4) = 832; the head adds 2 * 2 * 8 * 4
    assert list(work.forward_flops(LAYERS)) == [832, 832 + 128]
    # memory: 16 B per parameter + 2 stashed inputs x 8 values x 2 B + (34 * 2 * 4 + 5 * 1 * 4) B
    assert list(work.memory_bytes(LAYERS)) == [16 * P0 + 32 + 292, 16 * P1 + 32 + 292]


def test_dtfm_data_parallel_and_pipeline_by_hand():
    model = DtfmCost(tiny(), 2, 2)
    # c_DP = the stage's fp16 gradient; the one pair (a0, b0): 2 * (alpha + c_DP / (R * beta))
    dp0, dp1 = (2 * (0.010 + fp16(p) / (2 * 1e8)) for p in (P0, P1))
    assert model.data_parallel(GRID, LAYERS) == pytest.approx([dp0, dp1], rel=1e-12)
    dp = max(dp0, dp1)
    # c_PP = the fp16 activations of 2 micro-batches; both edges inside a site: alpha + c_PP / beta
    edge = 0.001 + 2 * fp16(BOUNDARY) / 1e9
    breakdown = model.breakdown(GRID, LAYERS)
    assert breakdown.iteration_s == pytest.approx(dp + 2 * edge, rel=1e-12)
    assert breakdown.pipeline_s == pytest.approx(2 * edge, rel=1e-12)
    assert breakdown.data_parallel_s == pytest.approx(dp, rel=1e-12)
    assert breakdown.compute_s == 0.0


def test_dtfm_pipeline_takes_the_slowest_pair_of_each_edge():
    model = DtfmCost(tiny(), 2, 2)
    crossed = np.array([[0, 1], [2, 3]])   # pipelines a0->b0 and a1->b1, both over the slow link
    edge = 0.010 + 2 * fp16(BOUNDARY) / 1e8
    dp = 2 * (0.001 + fp16(max(P0, P1)) / (2 * 1e9))
    assert model.score(crossed, LAYERS) == pytest.approx(dp + 2 * edge, rel=1e-12)


def test_full_pipeline_flow_shop_and_all_reduce_by_hand():
    model = FullCost(tiny(), 2, 2)
    hand = full_by_hand()
    breakdown = model.breakdown(GRID, LAYERS)
    assert breakdown.iteration_s == pytest.approx(hand["iteration"], rel=1e-12)
    assert breakdown.compute_s == pytest.approx(hand["compute"], rel=1e-12)
    assert breakdown.data_parallel_s == pytest.approx(hand["allreduce"], rel=1e-12)
    parts = breakdown.compute_s + breakdown.pipeline_s + breakdown.data_parallel_s
    assert parts == pytest.approx(breakdown.iteration_s, rel=1e-12)
    assert breakdown.fits


def test_full_uses_the_channel_bit_widths():
    wide = FullCost(tiny(), 2, 2).data_parallel(GRID, LAYERS)
    narrow = FullCost(tiny(compression={"gradient_bits": 4}), 2, 2).data_parallel(GRID, LAYERS)
    # per device of stage 0 and phase: one q4 frame of half the stage's gradient over the A-B link, its latency
    for device in (0, 1):
        assert narrow[0, device] == pytest.approx([frame_size("q4", math.ceil(P0 / 2)) / 1e8, 0.010], rel=1e-12)
    assert (narrow[..., 0] < wide[..., 0]).all() and (narrow[..., 1] == wide[..., 1]).all()


def test_full_marks_a_plan_that_does_not_fit_memory():
    devices = copy.deepcopy(TINY["devices"])
    need = 16 * P1 + 32 + 292                   # stage 1's parameters, stash and working memory
    devices[1]["memory_gb"] = (need - 8) / 1e9
    model = FullCost(tiny(devices=devices), 2, 2)
    assert not model.breakdown(GRID, LAYERS).fits
    assert model.score(GRID, LAYERS) >= INFEASIBLE
    assert FullCost(tiny(), 2, 2).score(GRID, LAYERS) < INFEASIBLE


def test_all_reduce_sums_every_peer_of_the_group():
    # one stage of 2 layers on all four devices: the whole model
    params = stage_parameters(CONFIG, [2], 0)
    model_full = FullCost(tiny(parallelism={"stages": 1, "replicas": 4}), 1, 4)
    grid, layers = np.array([[0, 1, 2, 3]]), np.array([2])
    # full: one fp16 frame of a quarter of the gradient per peer and phase; a0 sends to a1
    # (1e9 B/s) and b0, b1 (1e8 B/s), and waits for the slowest latency (10 ms) once per phase
    chunk = fp16(math.ceil(params / 4))
    assert model_full.data_parallel(grid, layers)[0, 0] == pytest.approx([chunk / 1e9 + 2 * chunk / 1e8, 0.010],
                                                                         rel=1e-12)
    # dtfm: every peer costs 2 * (alpha + c_DP / (4 * beta)), latency included each time
    model_dtfm = DtfmCost(tiny(parallelism={"stages": 1, "replicas": 4}), 1, 4)
    c_dp = fp16(params)
    a0 = 2 * (0.001 + c_dp / (4 * 1e9)) + 2 * 2 * (0.010 + c_dp / (4 * 1e8))
    assert model_dtfm.data_parallel(grid, layers) == pytest.approx([a0], rel=1e-12)


def test_bottleneck_assignment_minimises_the_slowest_pair():
    value, perm = bottleneck_assignment(np.array([[1.0, 9.0], [2.0, 3.0]]))
    assert value == 3.0 and list(perm) == [0, 1]            # 1 + 3 beats 9 + 2 on the max
    # every row is cheapest in column 0, so two rows must pay 5 (or 3): the bottleneck is 5,
    # above the lower bound max(row minima 1, column minima 1, 3, 3) = 3
    cost = np.array([[1.0, 5.0, 5.0], [1.0, 5.0, 5.0], [1.0, 3.0, 3.0]])
    value, perm = bottleneck_assignment(cost)
    assert value == 5.0 and sorted(perm) == [0, 1, 2] and cost[[0, 1, 2], perm].max() == 5.0


def test_open_path_order_is_the_shortest_open_path():
    # a line 0 - 2 - 1 - 3: the open path visits it end to end (cost 3), not in index order (7)
    position = np.array([0.0, 2.0, 1.0, 3.0])
    weight = np.abs(position[:, None] - position[None, :])
    order = open_path_order(weight)
    assert order in ([0, 2, 1, 3], [3, 1, 2, 0])


def test_dtfm_arrangement_rematches_pipelines_and_keeps_the_stage_groups():
    model = DtfmCost(tiny(), 2, 2)
    crossed = np.array([[0, 2], [3, 1]])   # groups {a0, b0}, {b1, a1}: pipelines a0->b1, b0->a1
    arranged = model.arrange(crossed, LAYERS)
    assert arranged.tolist() == GRID.tolist()              # a0->a1 and b0->b1, inside the sites
    c_pp = 2 * fp16(BOUNDARY)
    dp, edge = 2 * (0.010 + fp16(max(P0, P1)) / 2e8), 0.001 + c_pp / 1e9
    assert model.arranged_score(crossed, LAYERS) == pytest.approx(dp + 2 * edge, rel=1e-12)
    assert model.score(crossed, LAYERS) == pytest.approx(dp + 2 * (0.010 + c_pp / 1e8), rel=1e-12)
    assert FullCost(tiny(), 2, 2).arrange(crossed, LAYERS) is crossed   # full prices the grid as given


def test_dtfm_arrangement_orders_stages_along_the_shortest_path():
    data = copy.deepcopy(TINY)
    data["devices"] = [{"id": s, "site": s, "tflops": 1.0, "memory_gb": 1.0} for s in "ABC"]
    data["sites"]["C"] = {"bandwidth_gbps": 8.0, "latency_ms": 1.0}
    data["links"] = [{"between": ["A", "B"], "bandwidth_gbps": 8.0, "latency_ms": 1.0},
                     {"between": ["B", "C"], "bandwidth_gbps": 8.0, "latency_ms": 1.0},
                     {"between": ["A", "C"], "bandwidth_gbps": 0.8, "latency_ms": 50.0}]
    data["model"]["layers"] = 3
    data["parallelism"] = {"stages": 3, "replicas": 1}
    model = DtfmCost(Scenario.from_dict(data), 3, 1)
    # M = 4 micro-batches of 8 fp16 values; A -> C -> B pays the slow A-C link
    c_pp = 4 * fp16(BOUNDARY)
    layers = np.array([1, 1, 1])
    arranged = model.arrange(np.array([[0], [2], [1]]), layers)
    assert arranged.ravel().tolist() in ([0, 1, 2], [2, 1, 0])  # A -> B -> C
    assert model.breakdown(arranged, layers).pipeline_s == pytest.approx(2 * 2 * (0.001 + c_pp / 1e9))


def test_full_pipeline_uses_the_forward_and_backward_bit_widths():
    def iteration(**bits) -> float:
        scenario = tiny(compression={"forward_bits": 16, "backward_bits": 16, "gradient_bits": 16, **bits})
        return FullCost(scenario, 2, 2).breakdown(GRID, LAYERS).iteration_s

    # Each hop is one frame of 8 values, sent once per micro-batch on the critical path at 1e9 B/s
    # (compute dominates the (M - 1) x slowest term), so the iteration shrinks by exactly the
    # bytes the narrower frame saves / 1e9.
    saved_forward = fp16(BOUNDARY) - frame_size("q3", BOUNDARY)
    saved_backward = fp16(BOUNDARY) - frame_size("q6", BOUNDARY)
    assert saved_forward > 0 and saved_backward > 0
    assert iteration() - iteration(forward_bits=3) == pytest.approx(saved_forward / 1e9, abs=1e-13)
    assert iteration() - iteration(backward_bits=6) == pytest.approx(saved_backward / 1e9, abs=1e-13)
