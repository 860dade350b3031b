"""Starting grids: random placements, the two locality plans, and layer splits.

The locality plans are both baselines (bars the scheduler must beat) and the search's starting
points. Both follow one recipe: order the sites along a greedy nearest-neighbour tour, list the
devices site by site, and cut the list into chunks; chunks become stage groups (locality-dp:
each data-parallel group inside one site) or pipelines (locality-pipeline: each whole pipeline
inside one site). A group that does not fit its site spills into the next site on the tour, a
near one.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from swarm.scheduler.cost import Grid
from swarm.scheduler.scenario import Scenario
from swarm.scheduler.workload import Layers

__all__ = ["proportional_layers", "site_order", "locality_dp", "locality_pipeline", "random_grid", "shapes"]


def proportional_layers(layers: int, speed: npt.NDArray[np.float64]) -> Layers:
    """Layers per stage proportional to `speed` (largest remainder), each stage at least one."""
    stages = len(speed)
    share = speed / speed.sum() * (layers - stages)
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: layers - stages - counts.sum()]] += 1
    result: Layers = counts + 1
    return result


def site_order(scenario: Scenario) -> list[int]:
    """Device positions listed site by site, sites along a nearest-neighbour tour.

    The tour starts at the site with most devices; inside a site, faster devices come first so
    the slowest ones are the ones left out when the grid needs fewer devices than there are.
    """
    net = scenario.network
    count = np.bincount(net.site_of, minlength=len(net.site_bw))
    used = [int(k) for k in np.flatnonzero(count)]
    # cost of a site pair: the time to move 1 GB plus latency, a scale-free proxy
    pair = net.site_lat + 1e9 / net.site_bw
    tour = [max(used, key=lambda k: count[k])]
    left = set(used) - {tour[0]}
    while left:
        here = tour[-1]
        tour.append(min(sorted(left), key=lambda k: pair[here, k]))
        left.remove(tour[-1])
    rank = {site: i for i, site in enumerate(tour)}
    speed = [d.tflops * min(d.uplink_gbps or np.inf, 1e3) for d in scenario.devices]
    return sorted(range(len(scenario.devices)), key=lambda i: (rank[int(net.site_of[i])], -speed[i], i))


def _chosen(scenario: Scenario, needed: int) -> list[int]:
    """`needed` devices in site order, dropping the slowest when there are more than needed."""
    speed = np.array([d.tflops * min(d.uplink_gbps or np.inf, 1e3) for d in scenario.devices])
    keep = set(np.argsort(-speed, kind="stable")[:needed].tolist())
    return [i for i in site_order(scenario) if i in keep]


def locality_dp(scenario: Scenario, stages: int, replicas: int) -> Grid:
    """Each stage's replicas (its data-parallel group) packed into one site where possible."""
    order = _chosen(scenario, stages * replicas)
    return np.array(order, dtype=np.int64).reshape(stages, replicas)


def locality_pipeline(scenario: Scenario, stages: int, replicas: int) -> Grid:
    """Each pipeline (one column of the grid) packed into one site where possible."""
    order = _chosen(scenario, stages * replicas)
    return np.array(order, dtype=np.int64).reshape(replicas, stages).T.copy()


def random_grid(rng: np.random.Generator, devices: int, stages: int, replicas: int) -> Grid:
    """A uniformly random placement of S x R of the devices."""
    return rng.permutation(devices)[: stages * replicas].reshape(stages, replicas)


def shapes(scenario: Scenario) -> list[tuple[int, int]]:
    """The (stages, replicas) the search considers: the scenario's, or every S with R = N // S."""
    if scenario.parallelism is not None:
        return [(scenario.parallelism.stages, scenario.parallelism.replicas)]
    n, batch = len(scenario.devices), scenario.batch
    max_replicas = batch.global_sequences // batch.micro_sequences
    result = []
    for stages in range(1, min(scenario.model.layers, n) + 1):
        replicas = min(n // stages, max_replicas)
        if replicas >= 1 and (stages, replicas) not in result:
            result.append((stages, replicas))
    return result
