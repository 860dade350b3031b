"""The two cost models: `dtfm` (DT-FM's published model, exactly) and `full` (ours).

Both price a grid (S x R device indices; `grid[s, r]` holds stage s of pipeline r) with a layer
count per stage, and both split the price the same way so the search can update it cheaply:
`data_parallel(grid, layers, rows)` gives each stage's all-reduce time, `total` combines those
with the pipeline. A `Breakdown`'s three parts add up to the iteration time.

dtfm (Yuan et al., NeurIPS'22), volumes in fp16 whatever the scenario's compression says:
    DP(C)     = max_{d in C} sum_{d' in C, d' != d} 2 * (alpha(d,d') + c_DP / (R * beta(d,d')))
    DataPCost = max over stages of DP(stage group)
    edge(s)   = max_r alpha(g[s,r], g[s+1,r]) + c_PP / beta(g[s,r], g[s+1,r])
                (a grid's columns are its matching and its rows its stage order; `arrange`
                turns any grid into DT-FM's arrangement of the same stage groups: each edge the
                bottleneck perfect matching, the order an open-path TSP (matching.py), so that
                edge(s) is the bottleneck cost and PipelineCost the TSP path)
    PipelineCost = sum_s edge(s);  iteration = DataPCost + 2 * PipelineCost; no compute
    c_DP = the stage's parameters in fp16; c_PP = the fp16 activations of all M micro-batches of one
    pipeline (M = global / (micro x R)); both sized as the frames the peers send (workload.py).

full (ours): a GPipe iteration then a per-stage all-reduce, each a closed form that the
discrete-event simulator reproduces message by message.
    F[s,r] = forward FLOPs of stage s / device FLOP/s; B = (BACKWARD_FLOPS_FACTOR + 1) F = 3 F
             (the gradient, then one recomputed forward pass)
    X[s,r] = forward activation frame bytes / beta, Y[s,r] = backward frame bytes / beta,
    L[s,r] = alpha between g[s,r] and g[s+1,r]. Latency is a delay, not a busy link.
    M identical micro-batches through a chain of single servers finish at
        sum of all service and delay times + (M - 1) x the slowest server
    (an exact flow-shop identity), so for pipeline r
        T_fwd      = sum F + sum X + sum L + (M-1) max(F, X)
        done[s, r] = T_fwd + sum_{i>=s} B_i + sum_{s<=i<S-1} (Y_i + L_i) + Y_{s-1}
                     + (M-1) max(B_i for i >= s, Y_i for s-1 <= i < S-1)
    (the time stage s's device has computed its last backward pass and its uplink has sent the
    last gradient down to stage s-1: Y_{s-1} counts for s >= 1 only)
    all-reduce of stage s (reduce-scatter then all-gather, each device sending its R-1 frames of
    c_s = one chunk of 1/R of the gradient back to back on its uplink, latency paid once per phase):
        AR(s) = 2 max_{d} [ sum_{d' != d} c_s / beta(d,d') + max_{d'} alpha(d,d') ]
    iteration = max_s ( max_r done[s, r] + AR(s) )
    A device whose memory (workload.py) cannot hold its stage makes the plan invalid.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from swarm.scheduler.matching import bottleneck_assignment, open_path_order
from swarm.scheduler.scenario import Scenario
from swarm.scheduler.workload import BACKWARD_COMPUTE, Layers, PerStage, Workload

__all__ = ["Breakdown", "CostModel", "DtfmCost", "FullCost", "COST_MODELS", "cost_model", "Grid"]

INFEASIBLE = 1e9  # added to a plan's score per unfit device, so any plan that fits wins
DTFM_CODEC = "fp16"  # DT-FM sends every volume in fp16, whatever the scenario's compression

Grid = npt.NDArray[np.int64]  # (S, R) device positions: grid[s, r] holds stage s of pipeline r
Seconds = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Breakdown:
    """Predicted seconds per iteration; compute + pipeline + data_parallel = iteration."""

    iteration_s: float
    compute_s: float
    pipeline_s: float
    data_parallel_s: float
    fits: bool = True

    def to_dict(self) -> dict[str, float]:
        """The plan file's `predicted` object; `fits` is not part of it."""
        return {"iteration_s": self.iteration_s, "compute_s": self.compute_s,
                "pipeline_s": self.pipeline_s, "data_parallel_s": self.data_parallel_s}


class CostModel:
    """Shared set-up: the workload of an S x R grid and device arrays of the scenario.

    `total` returns a score and a tie-break; the tie-break is a smooth max of the same terms, so
    among equal scores the search prefers the plan whose near-critical stages are cheaper.
    """

    name = ""

    def __init__(self, scenario: Scenario, stages: int, replicas: int) -> None:
        self.scenario, self.stages, self.replicas = scenario, stages, replicas
        self.work = Workload(scenario, stages, replicas)
        self.net = scenario.network
        self.flops = np.array([d.tflops * 1e12 for d in scenario.devices])
        self.memory = np.array([d.memory_gb * 1e9 for d in scenario.devices])

    def data_parallel(self, grid: Grid, layers: Layers, rows: list[int] | None = None) -> Seconds:
        """All-reduce seconds of the stages in `rows` (all stages when None)."""
        raise NotImplementedError

    def total(self, grid: Grid, layers: Layers, dp: Seconds) -> tuple[float, float]:
        """(score, tie-break) given each stage's all-reduce time; lower is better."""
        raise NotImplementedError

    def breakdown(self, grid: Grid, layers: Layers) -> Breakdown:
        """The iteration time of `grid` split into compute, pipeline and data-parallel parts."""
        raise NotImplementedError

    def score(self, grid: Grid, layers: Layers) -> float:
        """Seconds per iteration of `grid` exactly as given (>= INFEASIBLE when it cannot fit)."""
        return self.total(grid, layers, self.data_parallel(grid, layers))[0]

    def arrange(self, grid: Grid, layers: Layers) -> Grid:
        """The grid this model runs for `grid`'s stage groups; `full`: the grid itself."""
        return grid

    def arranged_score(self, grid: Grid, layers: Layers) -> float:
        """`score` of `arrange(grid)`: how a placement (baselines included) is priced."""
        return self.score(self.arrange(grid, layers), layers)

    def _pairs(self, grid: Grid, rows: list[int] | None) -> tuple[Grid, Grid]:
        group = grid if rows is None else grid[rows]
        return group[:, :, None], group[:, None, :]


class DtfmCost(CostModel):
    """DT-FM's published cost model (see the module docstring)."""

    name = "dtfm"

    def __init__(self, scenario: Scenario, stages: int, replicas: int) -> None:
        super().__init__(scenario, stages, replicas)
        self.c_pp = self.work.micro_batches * self.work.frame_size(DTFM_CODEC, self.work.boundary_values)

    def c_dp(self, layers: Layers) -> PerStage:
        """(S,) bytes of each stage's whole gradient in fp16."""
        return self.work.gradient_bytes(layers, DTFM_CODEC)

    def data_parallel(self, grid: Grid, layers: Layers, rows: list[int] | None = None) -> Seconds:
        c_dp = self.c_dp(layers) if rows is None else self.c_dp(layers)[rows]
        a, b = self._pairs(grid, rows)
        pair = 2 * (self.net.latency(a, b) + c_dp[:, None, None] / (self.replicas * self.net.bandwidth(a, b)))
        idx = np.arange(self.replicas)
        pair[:, idx, idx] = 0.0
        seconds: Seconds = pair.sum(axis=2).max(axis=1)
        return seconds

    def arrange(self, grid: Grid, layers: Layers) -> Grid:
        """DT-FM's arrangement of the stage groups (rows) of `grid`; `grid` if that is no cheaper.

        The bottleneck matching of every pair of groups gives a group-to-group cost; the open
        path over those costs orders the groups; the matchings align the columns. The layer
        counts stay with the positions (the first and last position hold the embeddings).
        """
        stages = len(grid)
        if stages == 1:
            return grid
        pair = self.net.link_cost(grid[:, None, :, None], grid[None, :, None, :], self.c_pp)
        weight = np.zeros((stages, stages))
        matches: dict[tuple[int, int], Grid] = {}
        for i in range(stages):
            for j in range(i + 1, stages):
                weight[i, j], matches[i, j] = bottleneck_assignment(pair[i, j])
                weight[j, i] = weight[i, j]
                matches[j, i] = np.argsort(matches[i, j])
        order = open_path_order(weight)
        cols = np.arange(self.replicas)
        rows = [grid[order[0]]]
        for a, b in pairwise(order):
            cols = matches[a, b][cols]   # the partner in group b of each column's device
            rows.append(grid[b][cols])
        arranged = np.array(rows)
        return arranged if self.score(arranged, layers) < self.score(grid, layers) else grid

    def _edges(self, grid: Grid) -> Seconds:
        return self.net.link_cost(grid[:-1], grid[1:], self.c_pp)

    def total(self, grid: Grid, layers: Layers, dp: Seconds) -> tuple[float, float]:
        edges = self._edges(grid)
        pipeline = float(edges.max(axis=1).sum()) if len(edges) else 0.0
        soft = _soft_max(dp) + 2 * sum(_soft_max(row) for row in edges)
        return float(dp.max() + 2 * pipeline), float(soft)

    def breakdown(self, grid: Grid, layers: Layers) -> Breakdown:
        dp = self.data_parallel(grid, layers)
        edges = self._edges(grid)
        pipeline = float(edges.max(axis=1).sum()) if len(edges) else 0.0
        return Breakdown(float(dp.max() + 2 * pipeline), 0.0, 2 * pipeline, float(dp.max()))


class FullCost(CostModel):
    """Our model: compute, both pipeline directions, compressed volumes, memory (module docstring)."""

    name = "full"

    def data_parallel(self, grid: Grid, layers: Layers, rows: list[int] | None = None) -> Seconds:
        if self.replicas == 1:
            return np.zeros(self.stages if rows is None else len(rows))
        chunk = self.work.gradient_chunk_bytes(layers)
        if rows is not None:
            chunk = chunk[rows]
        a, b = self._pairs(grid, rows)
        send = chunk[:, None, None] / self.net.bandwidth(a, b)
        lat = self.net.latency(a, b)
        idx = np.arange(self.replicas)
        send[:, idx, idx] = 0.0
        lat[:, idx, idx] = 0.0
        seconds: Seconds = 2 * (send.sum(axis=2) + lat.max(axis=2)).max(axis=1)
        return seconds

    def _pipeline(self, grid: Grid, layers: Layers) -> tuple[Seconds, Seconds]:
        """(done (S, R): backward compute and sends finished, compute-only makespan per column (R,))."""
        m = self.work.micro_batches
        f = self.work.forward_flops(layers)[:, None] / self.flops[grid]
        b = BACKWARD_COMPUTE * f
        bw = self.net.bandwidth(grid[:-1], grid[1:])
        x = self.work.activation_bytes("forward") / bw
        y = self.work.activation_bytes("backward") / bw
        lat = self.net.latency(grid[:-1], grid[1:])
        slowest = f.max(axis=0) if not len(x) else np.maximum(f.max(axis=0), x.max(axis=0))
        t_fwd = f.sum(axis=0) + x.sum(axis=0) + lat.sum(axis=0) + (m - 1) * slowest
        # backward chain from the last stage down; row s of `link` is the hop s+1 -> s
        pad = np.zeros((1, grid.shape[1]))
        link, link_busy = np.vstack([y + lat, pad]), np.vstack([y, pad])
        suffix_sum = np.cumsum((b + link)[::-1], axis=0)[::-1]
        suffix_max = np.maximum.accumulate(np.maximum(b, link_busy)[::-1], axis=0)[::-1]
        # stage s >= 1 is free for its all-reduce once its uplink sent the last gradient down
        below = np.vstack([pad, y])
        done = t_fwd + suffix_sum + below + (m - 1) * np.maximum(suffix_max, below)
        compute = f.sum(axis=0) + b.sum(axis=0) + (m - 1) * (f.max(axis=0) + b.max(axis=0))
        return done, compute

    def _overflow(self, grid: Grid, layers: Layers) -> npt.NDArray[np.bool_]:
        need = self.work.memory_bytes(layers)[:, None]
        overflow: npt.NDArray[np.bool_] = need > self.memory[grid]
        return overflow

    def total(self, grid: Grid, layers: Layers, dp: Seconds) -> tuple[float, float]:
        done, _ = self._pipeline(grid, layers)
        finish = done.max(axis=1) + dp
        unfit = int(self._overflow(grid, layers).sum())
        soft = _soft_max(finish) + _soft_max(done.max(axis=0))
        return float(finish.max() + INFEASIBLE * unfit), float(soft)

    def breakdown(self, grid: Grid, layers: Layers) -> Breakdown:
        done, compute = self._pipeline(grid, layers)
        dp = self.data_parallel(grid, layers)
        end = done.max(axis=1)
        iteration = float((end + dp).max())
        compute_s = float(compute.max())
        pipeline_s = float(end.max()) - compute_s
        return Breakdown(iteration, compute_s, pipeline_s, iteration - float(end.max()),
                         fits=not self._overflow(grid, layers).any())


def _soft_max(values: Seconds, power: int = 8) -> float:
    """A smooth stand-in for max (a power mean): it drops when any near-maximal value drops,
    which lets the search make progress on the plateaus of a max-of-maxes cost."""
    top = float(values.max())
    if top <= 0:
        return 0.0
    return top * float(np.mean((values / top) ** power) ** (1 / power))


COST_MODELS: dict[str, type[CostModel]] = {"full": FullCost, "dtfm": DtfmCost}


def cost_model(name: str, scenario: Scenario, stages: int, replicas: int) -> CostModel:
    """The cost model called `name` ("full" or "dtfm") for an S x R grid of `scenario`."""
    if name not in COST_MODELS:
        raise ValueError(f"unknown cost model {name!r}; choose one of {', '.join(COST_MODELS)}")
    return COST_MODELS[name](scenario, stages, replicas)
