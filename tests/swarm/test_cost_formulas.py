"""Each cost formula on a tiny swarm whose numbers are worked out by hand in the comments.

The swarm: sites A and B, two devices each; inside a site 8 Gbps (1e9 B/s) and 1 ms, between the
sites 0.8 Gbps (1e8 B/s) and 10 ms. The model: 2 layers, d = 4, seq 2, vocab 8, so a layer has
12 * 16 = 192 parameters and the embedding 8 * 4 = 32. Global batch 4, micro 1, grid 2 x 2:
M = 4 / (1 * 2) = 2 micro-batches per pipeline; a boundary carries 1 * 2 * 4 = 8 values.
"""
import copy

import numpy as np
import pytest

from swarm.scheduler import Scenario
from swarm.scheduler.cost import INFEASIBLE, DtfmCost, FullCost
from swarm.scheduler.matching import bottleneck_assignment, open_path_order
from swarm.scheduler.network import GBPS
from swarm.scheduler.workload import Workload, wire_bytes

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


def test_wire_bytes_count_packed_values_and_scales():
    assert wire_bytes(1000, 4, 512) == 500 + 2 * 2     # 4000 bits, two fp16 bucket scales
    assert wire_bytes(10, 3, 128) == 4 + 2             # ceil(30 / 8) bytes, one block scale
    assert wire_bytes(10, 16, 128) == 20               # fp16 is raw


def test_workload_parameters_flops_and_memory():
    work = Workload(tiny(), 2, 2)
    assert work.micro_batches == 2
    assert list(work.params(LAYERS)) == [192 + 32, 192 + 32]
    assert list(Workload(tiny(), 1, 2).params(np.array([2]))) == [2 * 192 + 2 * 32]
    # forward FLOPs per micro-batch: 2 tokens * (24 * 16 + 4 * 2 * 4) = 832; the head adds 2 * 2 * 8 * 4
    assert list(work.forward_flops(LAYERS)) == [832, 832 + 128]
    # memory: 16 B x 224 params + 2 stashed inputs x 8 values x 2 B + (34 * 2 * 4 + 5 * 1 * 4) B
    assert list(work.memory_bytes(LAYERS)) == [3584 + 32 + 292] * 2


def test_dtfm_data_parallel_and_pipeline_by_hand():
    model = DtfmCost(tiny(), 2, 2)
    # c_DP = 2 B x 224 = 448; the one pair (a0, b0): 2 * (0.010 + 448 / (2 * 1e8))
    dp = 2 * (0.010 + 448 / 2e8)
    assert model.data_parallel(GRID, LAYERS) == pytest.approx([dp, dp], rel=1e-12)
    # c_PP = 2 B x 8 values x 2 micro-batches = 32; both edges inside a site: 0.001 + 32 / 1e9
    edge = 0.001 + 32 / 1e9
    breakdown = model.breakdown(GRID, LAYERS)
    assert breakdown.iteration_s == pytest.approx(dp + 2 * edge, rel=1e-12)
    assert breakdown.pipeline_s == pytest.approx(2 * edge, rel=1e-12)
    assert breakdown.data_parallel_s == pytest.approx(dp, rel=1e-12)
    assert breakdown.compute_s == 0.0


def test_dtfm_pipeline_takes_the_slowest_pair_of_each_edge():
    model = DtfmCost(tiny(), 2, 2)
    crossed = np.array([[0, 1], [2, 3]])   # pipelines a0->b0 and a1->b1, both over the slow link
    edge = 0.010 + 32 / 1e8
    dp = 2 * (0.001 + 448 / (2 * 1e9))
    assert model.score(crossed, LAYERS) == pytest.approx(dp + 2 * edge, rel=1e-12)


def test_full_pipeline_flow_shop_and_all_reduce_by_hand():
    model = FullCost(tiny(), 2, 2)
    f0, f1 = 832 / 1000, 960 / 1000            # 1e-9 TFLOPS = 1000 FLOP/s
    b0, b1 = 3 * f0, 3 * f1
    hop, lat, m = 16 / 1e9, 0.001, 2           # 8 fp16 values inside a site
    t_fwd = f0 + f1 + hop + lat + (m - 1) * max(f0, f1, hop)
    done0 = t_fwd + b1 + b0 + hop + lat + (m - 1) * max(b0, b1, hop)
    # all-reduce: 448 B of fp16 gradient, chunk 224 B, one peer across the A-B link
    allreduce = 2 * (224 / 1e8 + 0.010)
    breakdown = model.breakdown(GRID, LAYERS)
    assert breakdown.iteration_s == pytest.approx(done0 + allreduce, rel=1e-12)
    assert breakdown.compute_s == pytest.approx(f0 + f1 + f1 + b0 + b1 + b1, rel=1e-12)
    assert breakdown.data_parallel_s == pytest.approx(allreduce, rel=1e-12)
    parts = breakdown.compute_s + breakdown.pipeline_s + breakdown.data_parallel_s
    assert parts == pytest.approx(breakdown.iteration_s, rel=1e-12)
    assert breakdown.fits


def test_full_uses_the_channel_bit_widths():
    wide = FullCost(tiny(), 2, 2).data_parallel(GRID, LAYERS)
    narrow = FullCost(tiny(compression={"gradient_bits": 4}), 2, 2).data_parallel(GRID, LAYERS)
    # 224 params at 4 bits = 112 B + one bucket scale (2 B); chunk 57 B instead of 224 B
    assert narrow[0] == pytest.approx(2 * (57 / 1e8 + 0.010), rel=1e-12)
    assert narrow[0] < wide[0]


def test_full_marks_a_plan_that_does_not_fit_memory():
    devices = copy.deepcopy(TINY["devices"])
    devices[1]["memory_gb"] = 3.9e-6            # 3,900 B < the 3,908 B stage 1 needs
    model = FullCost(tiny(devices=devices), 2, 2)
    assert not model.breakdown(GRID, LAYERS).fits
    assert model.score(GRID, LAYERS) >= INFEASIBLE
    assert FullCost(tiny(), 2, 2).score(GRID, LAYERS) < INFEASIBLE


def test_all_reduce_sums_every_peer_of_the_group():
    # one stage of 2 layers on all four devices: 2 * 192 + 2 * 32 = 448 parameters
    model_full = FullCost(tiny(parallelism={"stages": 1, "replicas": 4}), 1, 4)
    grid, layers = np.array([[0, 1, 2, 3]]), np.array([2])
    # full: fp16 gradient 896 B, chunk 224 B; a0 sends to a1 (1e9 B/s) and b0, b1 (1e8 B/s),
    # and waits for the slowest latency (10 ms) once per phase
    a0 = 224 / 1e9 + 2 * 224 / 1e8 + 0.010
    assert model_full.data_parallel(grid, layers) == pytest.approx([2 * a0], rel=1e-12)
    # dtfm: c_DP = 896 B; every peer costs 2 * (alpha + 896 / (4 * beta)), latency included each time
    model_dtfm = DtfmCost(tiny(parallelism={"stages": 1, "replicas": 4}), 1, 4)
    a0 = 2 * (0.001 + 224 / 1e9) + 2 * 2 * (0.010 + 224 / 1e8)
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
    dp, edge = 2 * (0.010 + 448 / 2e8), 0.001 + 32 / 1e9
    assert model.arranged_score(crossed, LAYERS) == pytest.approx(dp + 2 * edge, rel=1e-12)
    assert model.score(crossed, LAYERS) == pytest.approx(dp + 2 * (0.010 + 32 / 1e8), rel=1e-12)
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
    # M = 4 micro-batches of 8 fp16 values: c_PP = 64 B; A -> C -> B pays the slow A-C link
    layers = np.array([1, 1, 1])
    arranged = model.arrange(np.array([[0], [2], [1]]), layers)
    assert arranged.ravel().tolist() in ([0, 1, 2], [2, 1, 0])  # A -> B -> C
    assert model.breakdown(arranged, layers).pipeline_s == pytest.approx(2 * 2 * (0.001 + 64 / 1e9))


def test_full_pipeline_uses_the_forward_and_backward_bit_widths():
    def iteration(**bits) -> float:
        scenario = tiny(compression={"forward_bits": 16, "backward_bits": 16, "gradient_bits": 16, **bits})
        return FullCost(scenario, 2, 2).breakdown(GRID, LAYERS).iteration_s

    # 8 values: 16 B in fp16; 3 bits: 3 B + one 2-byte scale = 5 B; 6 bits: 6 B + 2 B = 8 B.
    # Each hop is sent once per micro-batch on the critical path at 1e9 B/s (compute dominates
    # the (M - 1) x slowest term), so the iteration shrinks by exactly the saved bytes / 1e9.
    assert iteration() - iteration(forward_bits=3) == pytest.approx((16 - 5) / 1e9, abs=1e-13)
    assert iteration() - iteration(backward_bits=6) == pytest.approx((16 - 8) / 1e9, abs=1e-13)
