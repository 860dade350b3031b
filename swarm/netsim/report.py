"""The `net run` report: what the swarm did over the emulated network, next to what the cost model says.

- `steps`: every committed step's loss and seconds (the coordinator's commit-to-commit time);
  `tokens_per_s` and `iteration_s.measured` are medians over the steps after `skipped_steps`.
- `iteration_s.predicted`: the scheduler's `full` cost model for the plan actually run (the
  coordinator's first plan), on the network the harness shaped (each path's rate and latency),
  the model, batch and codecs trained, and compute from the peers' measured speed: their
  records' TFLOPS are measured inside their CPU quotas, so one per-core speed is estimated from
  all of them (the median of TFLOPS / cores) and scaled by each device's quota; the codecs' speed
  and the commit wait are the records' own (`codec_gvalues`, the shortest `breakdown.commit_s`).
- `iteration_s.calibrated`: the same model with each member's compute speed as achieved while
  training (its stage's FLOPs over its median `breakdown.compute_s`, `swarm.coordinator.calibration`):
  what is left of the gap to `measured` is the rest of the model, not the compute estimate.
- `links[].bytes`: bytes on each directed path while training (tc class counters from the first
  plan to the end: IP packets with headers, data plane and DHT alike); `bytes_total` includes the
  peers' join-time link probes.
"""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from models import get_config
from swarm.coordinator.calibration import achieved_tflops, median_compute_s
from swarm.coordinator.planning import control_section, scenario_job
from swarm.scheduler import Plan, Scenario, predict

if TYPE_CHECKING:
    from .harness import NetHarness
    from .run import RunOptions

__all__ = ["build_report", "effective_tflops", "prediction_scenario"]


def build_report(net: NetHarness, options: RunOptions, coordinator: dict[str, Any], records: dict[str, Any],
                 start: dict[tuple[str, str], int], end: dict[tuple[str, str], int], *, wall_s: float,
                 exit_codes: dict[str, int]) -> dict[str, Any]:
    plans = coordinator.get("plans") or []
    if not plans:
        raise RuntimeError("the coordinator published no plan: nothing ran")
    first = plans[0]
    grid, layers = [list(row) for row in first["grid"]], [int(n) for n in first["layers"]]
    tokens_per_step = options.training.batch * get_config(options.training.model).context
    steps = [{"step": int(e["step"]), "loss": e["loss"], "seconds": round(float(e["seconds"]), 4),
              "tokens_per_s": round(tokens_per_step / max(float(e["seconds"]), 1e-9), 1)}
             for e in coordinator.get("steps") or []]
    counted = steps[options.skip_steps:] or steps
    tflops = effective_tflops(records, net.cores)
    predicted = _predict(net, options, grid, layers, tflops, records)
    ran = [e for e in (coordinator.get("steps") or [])[options.skip_steps:]
           if e.get("plan_version") == first["version"]]
    achieved = achieved_tflops(median_compute_s(ran, [name for row in grid for name in row]), grid, layers,
                               options.training)
    calibrated = _predict(net, options, grid, layers, {**tflops, **achieved}, records) if achieved else None
    committed = len(steps)
    losses = [s["loss"] for s in steps if s["loss"] is not None]
    return {
        "scenario": net.scenario.name,
        "plan": {"stages": len(grid), "replicas": len(grid[0]), "grid": grid, "layers": layers,
                 "given": options.plan is not None, "versions": len(plans),
                 "reason": (first.get("reason") or {}).get("text")},
        "codecs": {"forward": options.codecs.forward, "backward": options.codecs.backward,
                   "gradient": options.codecs.gradient},
        "forward_delta": options.codecs.forward_delta,
        "latency": net.latency,
        "model": options.training.model, "batch": options.training.batch,
        "micro_batches": options.training.micro_batches,
        "tokens_per_step": tokens_per_step,
        "steps": steps,
        "skipped_steps": options.skip_steps,
        "tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in counted), 1) if counted else 0.0,
        "iteration_s": {"measured": round(statistics.median(s["seconds"] for s in counted), 4) if counted else None,
                        "predicted": None if predicted is None else round(predicted["iteration_s"], 4),
                        "predicted_breakdown": predicted,
                        "calibrated": None if calibrated is None else round(calibrated["iteration_s"], 4),
                        "calibrated_breakdown": calibrated},
        "all_steps_committed": [s["step"] for s in steps] == list(range(1, options.training.steps + 1)),
        "loss_fell": len(losses) >= 2 and _mean(losses[-3:]) < _mean(losses[:3]),
        "bytes_per_step": {ch: round(n / max(committed, 1))
                           for ch, n in (coordinator.get("bytes_per_channel") or {}).items()},
        "bits_per_value": coordinator.get("bits_per_value") or {},
        "links": [{"from": p.src, "to": p.dst, "configured_mbps": round(p.mbps, 3),
                   "latency_ms": round(p.latency_ms, 3), "shaped": p.shaped,
                   "bytes": end.get((p.src, p.dst), 0) - start.get((p.src, p.dst), 0),
                   "bytes_total": end.get((p.src, p.dst), 0)} for p in net.paths],
        "peers": {name: _peer(record, net.cores.get(name), tflops.get(name), achieved.get(name))
                  for name, record in sorted(records.items())},
        "cpu": {"cgroup": None if not net.cores else f"v{net.cpu.version}", "cores": net.cores},
        "checksum_mismatches": coordinator.get("mismatches") or [],
        "namespaces": {"prefix": net.topology.coordinator.netns.rsplit("-", 1)[0], "subnet": "10.213.0.0/16"},
        "wall_s": round(wall_s, 2),
        "exit_codes": exit_codes,
    }


def effective_tflops(records: dict[str, Any], cores: dict[str, float]) -> dict[str, float]:
    """Each peer's compute speed for the prediction (see the module docstring); {} without records."""
    measured = {name: float(r["tflops"]) for name, r in records.items() if r.get("tflops")}
    if not measured:
        return {}
    quota = {name: cores[name] for name in measured if cores.get(name)}
    if not quota:
        return measured
    per_core = statistics.median(measured[name] / quota[name] for name in quota)
    return {name: per_core * quota[name] if name in quota else measured[name] for name in measured}


def prediction_scenario(net: NetHarness, options: RunOptions, replicas: int, tflops: dict[str, float],
                        records: dict[str, Any]) -> Scenario:
    """The scenario the harness actually ran: its shaped paths, the trained model, batch and codecs, and
    what the peers' records (wire dicts by name) say of their codecs and the commit."""
    devices = [{"id": d.id, "tflops": tflops.get(d.id, d.tflops), "memory_gb": d.memory_gb,
                **({} if (codec := records.get(d.id, {}).get("codec_gvalues") or d.codec_gvalues) is None
                   else {"codec_gvalues": codec})}
               for d in net.scenario.devices]
    measured = {(p.src, p.dst): (p.mbps / 1e3, p.latency_ms) for p in net.paths}
    model, batch, compression = scenario_job(options.training, options.codecs, replicas)
    control = control_section(r["breakdown"]["commit_s"] for r in records.values() if r.get("breakdown"))
    return Scenario.from_measurements(net.scenario.name, devices, measured, model=model, batch=batch,
                                      compression=compression, control=control)


def _predict(net: NetHarness, options: RunOptions, grid: list[list[str]], layers: list[int],
             tflops: dict[str, float], records: dict[str, Any]) -> dict[str, float] | None:
    if not tflops:
        return None
    scenario = prediction_scenario(net, options, len(grid[0]), tflops, records)
    plan = Plan(scenario.name, tuple(tuple(row) for row in grid), tuple(layers))
    return {key: round(value, 5) for key, value in predict(scenario, plan, "full").to_dict().items()}


def _peer(record: dict[str, Any], cores: float | None, tflops: float | None, achieved: float | None) -> dict[str, Any]:
    keys = ("state", "stage", "replica", "step", "tflops", "bytes_sent", "values_sent", "dropped_stale", "rejected",
            "error", "links")
    return {**{key: record.get(key) for key in keys}, "cpu_cores": cores, "tflops_used": tflops,
            "tflops_achieved": achieved}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
