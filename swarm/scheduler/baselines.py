"""The bars the scheduler must clear, and a floor no plan can go under.

- `best_random`: the best of n uniformly random placements (DT-FM's baseline, n = 5,000).
- `genetic`: a genetic algorithm with DT-FM's published budget: population 100, 5,000
  evaluations in all, five-point crossover; a genome is a permutation of the devices read
  stage by stage into the grid, with the even layer split.
- `locality`: the two locality plans of construct.py, with the even layer split.
- `lower_bound`: a valid floor for a given shape S x R, from the best link and the fastest devices
  (see its docstring); it says how far from optimal a plan can at most be.
All return seconds per iteration under the given cost model (memory-infeasible: >= 1e9). Every
placement is priced with `model.arranged_score`: under `dtfm` that is DT-FM's own pricing of the
stage groups (bottleneck matchings, best stage order), so the baselines are as strong as in the
paper and not handicapped by a random matching.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models import even_layers, forward_flops_per_token, stage_parameters
from swarm.scheduler.construct import locality_dp, locality_pipeline, random_grid
from swarm.scheduler.cost import CostModel, DtfmCost
from swarm.scheduler.workload import BACKWARD_COMPUTE, Layers

__all__ = ["best_random", "genetic", "locality", "lower_bound"]

POPULATION = 100
EVALUATIONS = 5_000
CROSSOVER_POINTS = 5


def best_random(model: CostModel, samples: int = EVALUATIONS, seed: int = 0) -> float:
    """The lowest cost among `samples` random placements."""
    rng = np.random.default_rng(seed)
    layers = _even(model)
    n = len(model.scenario.devices)
    return min(model.arranged_score(random_grid(rng, n, model.stages, model.replicas), layers)
               for _ in range(samples))


def genetic(model: CostModel, evaluations: int = EVALUATIONS, seed: int = 0) -> float:
    """DT-FM-style GA: tournament parents, five-point crossover, swap mutation, replace-worst."""
    rng = np.random.default_rng(seed)
    n, used = len(model.scenario.devices), model.stages * model.replicas
    layers = _even(model)

    def fitness(genome: npt.NDArray[np.int64]) -> float:
        return model.arranged_score(genome[:used].reshape(model.stages, model.replicas), layers)

    population = [rng.permutation(n) for _ in range(min(POPULATION, evaluations))]
    scores = [fitness(g) for g in population]
    for _ in range(evaluations - len(population)):
        a, b = (min(rng.choice(len(population), size=2, replace=False), key=scores.__getitem__)
                for _ in range(2))
        child = _crossover(population[a], population[b], rng)
        if rng.random() < 0.5:
            i, j = rng.choice(n, size=2, replace=False)
            child[i], child[j] = child[j], child[i]
        score = fitness(child)
        worst = int(np.argmax(scores))
        if score < scores[worst]:
            population[worst], scores[worst] = child, score
    return float(min(scores))


def locality(model: CostModel) -> dict[str, float]:
    """Costs of the two locality plans: {"locality-dp": ..., "locality-pipeline": ...}."""
    layers = _even(model)
    build = {"locality-dp": locality_dp, "locality-pipeline": locality_pipeline}
    return {name: model.arranged_score(f(model.scenario, model.stages, model.replicas), layers)
            for name, f in build.items()}


def lower_bound(model: CostModel) -> float:
    """No S x R plan can cost less than this (a proof sketch per term follows).

    The best link: beta* = the highest bandwidth and alpha* = the lowest latency any two devices
    can have (per site pair, capped by the two largest uplinks).
    dtfm: the stage with most gradient bytes has at least 1/S of all stages' bytes (a total no
    split changes), and each of its devices pays R - 1 terms of at least 2 (alpha* + c / (R beta*));
    each of the S - 1 pipeline edges costs at least alpha* + c_PP / beta*.
    full: stage 0 finishes its last backward only after all compute (work / total FLOP/s of the
    fastest S x R devices) and after every micro-batch crossed boundary 0 both ways; then its
    last share reaches an owner (a latency), which broadcasts R - 1 frames of at least 1/R of the
    embeddings and one layer (the reduce-scatter's frames may hide behind backward, the all-gather's
    cannot); then the commit. Codecs only add time.
    """
    work, net = model.work, model.net
    stages, replicas = model.stages, model.replicas
    uplinks = np.sort(net.uplink)[-2:]
    best_bw = min(float(net.site_bw.max()), float(uplinks.min()))
    best_lat = float(net.site_lat.min())
    if isinstance(model, DtfmCost):
        c_dp = float(model.c_dp(_even(model)).sum()) / stages
        dp = 2 * (replicas - 1) * (best_lat + c_dp / (replicas * best_bw))
        edge = best_lat + model.c_pp / best_bw
        return float(dp + 2 * (stages - 1) * edge)
    config = work.config
    whole = [config.layers]  # the model as one stage: all layers, the embeddings and the head
    per_micro_batch = (1 + BACKWARD_COMPUTE) * work.tokens * forward_flops_per_token(config, whole, 0)
    flops = work.micro_batches * replicas * per_micro_batch
    fastest = np.sort(model.flops)[-stages * replicas:].sum()
    pipeline = flops / fastest
    if stages > 1:
        volume = work.activation_bytes("forward") + work.activation_bytes("backward")
        pipeline = max(pipeline, work.micro_batches * volume / best_bw)
    commit_s = model.scenario.control.commit_s
    if replicas == 1:
        return float(pipeline + commit_s)
    # stage 0 holds at least one layer and the embeddings (and the head too when it is the only stage)
    first = stage_parameters(config, [1] * stages if stages > 1 else whole, 0)
    chunk = work.frame_size(work.codecs["gradient"], -(-first // replicas))
    return float(pipeline + (replicas - 1) * chunk / best_bw + 2 * best_lat + commit_s)


def _even(model: CostModel) -> Layers:
    """DT-FM's uniform layer split for the model's shape."""
    return np.asarray(even_layers(model.scenario.model.layers, model.stages), dtype=np.int64)


def _crossover(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64],
               rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Five-point crossover of two permutations, repaired to stay a permutation.

    Segments alternate between the parents; a device already taken is skipped and the holes are
    filled with the missing devices in the order they appear in the second parent.
    """
    n = len(a)
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(CROSSOVER_POINTS, n - 1), replace=False))
    source = np.zeros(n, dtype=np.int64)
    for k, cut in enumerate(cuts):
        source[cut:] = (k + 1) % 2
    child = np.where(source == 0, a, b)
    seen = np.zeros(n, dtype=bool)
    keep = np.zeros(n, dtype=bool)
    for i, device in enumerate(child):
        if not seen[device]:
            seen[device] = keep[i] = True
    missing = [d for d in b if not seen[d]]
    child[~keep] = missing
    return child
