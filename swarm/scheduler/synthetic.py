"""Heterogeneous volunteer swarms for benchmarks, tests and the simulator.

`volunteer_scenario` draws a swarm like the ones swarm is for: mixed consumer and datacenter
GPUs, about half of them at home behind 0.05-1 Gbps uplinks, spread over dozens of sites placed
on a world map, so latency grows with distance (5-250 ms) and bandwidth falls with it. The same
seed gives the same swarm.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from swarm.scheduler.scenario import Scenario

__all__ = ["volunteer_scenario", "GPUS"]

# name -> (sustained fp16 TFLOPS, memory GB); sustained, not peak: what a profile measures
GPUS = {
    "t4": (8.0, 16.0), "rtx3060": (13.0, 12.0), "a10g": (30.0, 24.0), "rtx3090": (35.0, 24.0),
    "v100": (60.0, 32.0), "rtx4090": (80.0, 24.0), "a100": (150.0, 80.0),
}

DEFAULT_MODEL = {"layers": 24, "d_model": 2048, "heads": 16, "seq_len": 2048, "vocab": 50257}


def volunteer_scenario(devices: int, sites: int, seed: int = 0, name: str | None = None,
                       model: dict[str, int] | None = None, global_sequences: int = 1024,
                       parallelism: dict[str, int] | None = None) -> Scenario:
    """A random heterogeneous volunteer swarm of `devices` GPUs over `sites` sites."""
    if sites > devices:
        raise ValueError(f"sites ({sites}) must not exceed devices ({devices})")
    rng = np.random.default_rng(seed)
    where = rng.uniform([0.0, 0.0], [1.0, 0.5], size=(sites, 2))  # unit ~ 40,000 km around
    names = [f"site{k}" for k in range(sites)]
    site_of = np.concatenate([np.arange(sites), rng.integers(sites, size=devices - sites)])
    gpu_names = list(GPUS)
    weights = np.array([0.1, 0.2, 0.1, 0.25, 0.1, 0.15, 0.1])
    device_list = []
    for i in range(devices):
        tflops, memory = GPUS[gpu_names[rng.choice(len(gpu_names), p=weights)]]
        device = {"id": f"{names[site_of[i]]}-d{i}", "site": names[site_of[i]],
                  "tflops": tflops, "memory_gb": memory}
        if rng.random() < 0.5:
            device["uplink_gbps"] = round(float(np.exp(rng.uniform(np.log(0.05), np.log(1.0)))), 4)
        device_list.append(device)
    site_data = {n: {"bandwidth_gbps": round(float(rng.uniform(1.0, 10.0)), 2), "latency_ms": 1.0}
                 for n in names}
    links = []
    for a in range(sites):
        for b in range(a + 1, sites):
            gap = np.abs(where[a] - where[b])
            distance = float(np.hypot(min(gap[0], 1 - gap[0]), gap[1]))  # wraps around the globe
            links.append({"between": [names[a], names[b]],
                          "latency_ms": round(5.0 + 450.0 * distance, 2),
                          "bandwidth_gbps": round(max(0.1, 1.2 - 1.8 * distance), 3)})
    data: dict[str, Any] = {"name": name or f"volunteers-{devices}x{sites}-seed{seed}", "devices": device_list,
            "sites": site_data, "links": links, "model": model or DEFAULT_MODEL,
            "batch": {"global_sequences": global_sequences, "micro_sequences": 1},
            "compression": {"forward_bits": 3, "backward_bits": 6, "gradient_bits": 4}}
    if parallelism is not None:
        data["parallelism"] = parallelism
    return Scenario.from_dict(data)
