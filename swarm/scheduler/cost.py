"""The two cost models: `dtfm` (DT-FM's published model, exactly) and `full` (ours).

Both price a grid (S x R device indices; `grid[s, r]` holds stage s of pipeline r) with a layer
count per stage, and both split the price the same way so the search can update it cheaply:
`data_parallel(grid, layers, rows)` gives each stage's all-reduce terms (one row per stage: a
move re-prices only the stages it touches), `total` combines those with the pipeline. A
`Breakdown`'s parts add up to the iteration time.

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

full (ours): a GPipe iteration whose all-reduce overlaps its last backward passes, then the commit.
Each term is a closed form (timeline.py) that the discrete-event simulator reproduces message by
message.
    kappa[d]  = seconds device d spends on one value in one codec pass (an encode or a decode):
                1 / codec_gvalues, 0 when the scenario leaves it out. Codecs run on the device's
                compute, serialised with it: a sender encodes every frame it sends, a receiver
                decodes every frame it gets.
    V = values of one micro-batch at a stage boundary; n_s = boundaries of stage s (0, 1 or 2)
    F[s,r] = forward FLOPs of stage s / device FLOP/s + n_s V kappa (decode the input, encode the output)
    B[s,r] = (BACKWARD_FLOPS_FACTOR + 1) x those FLOPs / FLOP/s + n_s V kappa (the gradient, then
             one recomputed forward pass; decode the gradient from above, encode the one sent below)
    X[s,r] = forward activation frame bytes / beta, Y[s,r] = backward frame bytes / beta,
    L[s,r] = alpha between g[s,r] and g[s+1,r]. Latency is a delay, not a busy link.
    M identical micro-batches through a chain of single servers finish at
        sum of all service and delay times + (M - 1) x the slowest server
    (an exact flow-shop identity), so for pipeline r
        T_fwd = sum F + sum X + sum L + (M-1) max(F, X)
    The backward chain (compute S-1, hop S-2, compute S-2, ..., compute 0, all jobs released at
    T_fwd) is the same shop, except that its last micro-batch also encodes the stage's R - 1
    reduce-scatter shares as backward produces them: E[s,r] = (R-1) c_s kappa more compute, c_s =
    ceil(G_s / R) values of one chunk, G_s the stage's parameters. The longest path through the
    (micro-batch x server) grid gives the last job at server k (timeline.last_jobs; p the
    services, e the extras, d the latencies):
        C_M(k) = sum_{i<=k} (p_i + d_i) + max_{i0<=k} [p_i0 + (M-2) max_{i<=i0} p_i + sum_{i0<=i<=k} e_i]
        C_{M-1}(k) = sum_{i<=k} (p_i + d_i) + (M-2) max_{i<=k} p_i     (e = 0: the identity above)
    which give, for device (s, r): end[s,r] its last backward pass ends, start = end - B - E,
    free[s,r] its uplink has sent the M-1 earlier gradients down (C_{M-1} at hop s-1; stage 0 and
    M = 1: T_fwd), done[s,r] it has sent the last one (C_M at hop s-1; stage 0: end).
    all-reduce of stage s, bucketed (reduce-scatter then all-gather; each device sends its R-1
    frames of one chunk per phase back to back on its uplink, latency paid once per phase):
        P[s,r] = sum_{d' != d} chunk bytes / beta(d,d'),  A[s,r] = max_{d'} alpha(d,d')
        K_s    = ceil(G_s / BUCKET_VALUES) buckets; bucket k is ready at start + k (end - start) / K
        The pipeline's gradient has the uplink first. Before the last gradient goes down (at
        max(end, free)) the uplink sends the K-1 buckets ready by then, from
        max(free, start + (end - start) / K) on; the rest follows once the gradient is sent:
        early  = min((K-1)/K P, max(0, max(end, free) - max(free, start + (end - start) / K)))
        sent   = done + P - early                 (its last share has left; K = 1: no overlap)
        D      = R c_s kappa                      (decode R-1 shares + encode the aggregate; or
                                                   decode the R gathered chunks)
        reduced[s,r] = max(max_{r' != r} (sent + A)[s,r'], end[s,r])   (every other share is in)
        bcast  = max(reduced + D, sent)           (the owner broadcasts its chunk)
        AR_end(s) = max_r [ max_{r' != r} (bcast + P + A)[s,r'] + D[s,r] ]
        (exact for R = 2; for more replicas A and P bound each frame's latency and send.)
    R = 1: AR_end(s) = max_r done.
    iteration = max_s AR_end(s) + commit_s
    (commit_s: the scenario's `control` section, the prepared -> commit round trip to the
    coordinator that ends every step; 0 when absent.)
    Breakdown: compute = the compute-only makespan of the pipeline (codecs included), pipeline =
    max done - compute, data_parallel = max AR_end - max done (the all-reduce left after the
    pipeline), control = commit_s.
    A device whose memory (workload.py) cannot hold its stage makes the plan invalid.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from swarm.scheduler.matching import bottleneck_assignment, open_path_order
from swarm.scheduler.scenario import Scenario
from swarm.scheduler.timeline import Timeline, compute_makespan, overlapped_finish, pipeline_timeline
from swarm.scheduler.workload import BACKWARD_COMPUTE, Layers, PerStage, Workload

__all__ = ["Breakdown", "CostModel", "DtfmCost", "FullCost", "COST_MODELS", "cost_model", "Grid"]

INFEASIBLE = 1e9  # added to a plan's score per unfit device, so any plan that fits wins
DTFM_CODEC = "fp16"  # DT-FM sends every volume in fp16, whatever the scenario's compression

Grid = npt.NDArray[np.int64]  # (S, R) device positions: grid[s, r] holds stage s of pipeline r
Seconds = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Breakdown:
    """Predicted seconds per iteration; compute + pipeline + data_parallel + control = iteration."""

    iteration_s: float
    compute_s: float
    pipeline_s: float
    data_parallel_s: float
    control_s: float = 0.0
    fits: bool = True

    def to_dict(self) -> dict[str, float]:
        """The plan file's `predicted` object; `fits` is not part of it."""
        return {"iteration_s": self.iteration_s, "compute_s": self.compute_s, "pipeline_s": self.pipeline_s,
                "data_parallel_s": self.data_parallel_s, "control_s": self.control_s}


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
        """The all-reduce terms of the stages in `rows` (all stages when None), one row per stage."""
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
    """Our model: compute, codecs, both pipeline directions, compressed volumes, the all-reduce's
    overlap with backward, the commit, memory (module docstring)."""

    name = "full"

    def __init__(self, scenario: Scenario, stages: int, replicas: int) -> None:
        super().__init__(scenario, stages, replicas)
        self.commit_s = scenario.control.commit_s
        self.frames = {channel: self.work.activation_bytes(channel) for channel in ("forward", "backward")}

    def data_parallel(self, grid: Grid, layers: Layers, rows: list[int] | None = None) -> Seconds:
        """(stages, R, 2): each device's seconds of one phase's sends (P) and the phase's latency (A)."""
        chunk = self.work.gradient_chunk_bytes(layers)
        if rows is not None:
            chunk = chunk[rows]
        a, b = self._pairs(grid, rows)
        send = chunk[:, None, None] / self.net.bandwidth(a, b)
        lat = self.net.latency(a, b)
        idx = np.arange(self.replicas)
        send[:, idx, idx] = 0.0
        lat[:, idx, idx] = 0.0
        seconds: Seconds = np.stack([send.sum(axis=2), lat.max(axis=2)], axis=-1)
        return seconds

    def _passes(self, grid: Grid, layers: Layers) -> tuple[Seconds, Seconds]:
        """(S, R) seconds of one micro-batch's forward and backward pass, codecs included."""
        flops = self.work.forward_flops(layers)[:, None] / self.flops[grid]
        codec = self.work.pass_values[:, None] * self.work.codec_s[grid]
        return flops + codec, BACKWARD_COMPUTE * flops + codec

    def _timeline(self, grid: Grid, layers: Layers) -> Timeline:
        """The pipeline's passes, and the share encodes of the last backward pass."""
        shares = (self.replicas - 1) * self.work.chunk_values(layers)[:, None] * self.work.codec_s[grid]
        bw = self.net.bandwidth(grid[:-1], grid[1:])
        return pipeline_timeline(*self._passes(grid, layers), self.frames["forward"] / bw, self.frames["backward"] / bw,
                                 self.net.latency(grid[:-1], grid[1:]), shares, self.work.micro_batches)

    def _finish(self, grid: Grid, layers: Layers, dp: Seconds, timeline: Timeline) -> Seconds:
        """(S,) when each stage's all-reduce ends (the end of its pipeline passes when R = 1)."""
        if self.replicas == 1:
            done: Seconds = timeline.done.max(axis=1)
            return done
        chunks = self.replicas * self.work.chunk_values(layers)[:, None] * self.work.codec_s[grid]
        return overlapped_finish(timeline, dp[..., 0], dp[..., 1], self.work.buckets(layers), chunks)

    def _overflow(self, grid: Grid, layers: Layers) -> npt.NDArray[np.bool_]:
        need = self.work.memory_bytes(layers)[:, None]
        overflow: npt.NDArray[np.bool_] = need > self.memory[grid]
        return overflow

    def total(self, grid: Grid, layers: Layers, dp: Seconds) -> tuple[float, float]:
        timeline = self._timeline(grid, layers)
        finish = self._finish(grid, layers, dp, timeline)
        unfit = int(self._overflow(grid, layers).sum())
        soft = _soft_max(finish) + _soft_max(timeline.done.max(axis=0))
        return float(finish.max() + self.commit_s + INFEASIBLE * unfit), float(soft)

    def breakdown(self, grid: Grid, layers: Layers) -> Breakdown:
        timeline = self._timeline(grid, layers)
        finish = float(self._finish(grid, layers, self.data_parallel(grid, layers), timeline).max())
        end = float(timeline.done.max())
        compute_s = float(compute_makespan(*self._passes(grid, layers), self.work.micro_batches).max())
        return Breakdown(finish + self.commit_s, compute_s, end - compute_s, finish - end, self.commit_s,
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
