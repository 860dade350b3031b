"""The cost model's step time on the compute the peers achieve, beside the one it predicted from their join.

A peer's TFLOPS are measured at join with a matrix-multiply burst, alone on its device: training
gets less (small kernels, Python between them, the peer's own data-plane threads, neighbours on a
shared host). Once a plan has run a few steps, each member's step breakdown says how long its
compute took (`StepBreakdown.compute_s`, codecs included); its stage's FLOPs over that time is the
speed it achieves on this job. The coordinator prices the running plan again with those speeds
(`calibrated_step_s`) and reports it beside the plan-time prediction, so a reader sees how much of
the gap between predicted and measured step time is the compute estimate and how much the rest of
the model. Plans are still chosen on the join measurements: every candidate peer has one, and a
peer that trained would otherwise look slower than a newcomer that has not.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from models import get_config
from models.stages import forward_flops_per_token
from peers.protocol import Codecs, PeerRecord, PlanRecord, TrainingSpec
from swarm.scheduler.workload import BACKWARD_COMPUTE

from .planning import Placement, predicted_step_s

__all__ = ["CALIBRATION_STEPS", "median_compute_s", "achieved_tflops", "calibrated_step_s"]

# Steps of a plan whose breakdowns calibrate it; its first step (kernels, warm caches) is left out.
CALIBRATION_STEPS = 5


def median_compute_s(steps: Iterable[Mapping[str, Any]], members: Iterable[str]) -> dict[str, float]:
    """Each member's median `compute_s` over these report step entries (their "breakdown" tables)."""
    seen: dict[str, list[float]] = {name: [] for name in members}
    for entry in steps:
        for name, breakdown in (entry.get("breakdown") or {}).items():
            if name in seen and breakdown.get("compute_s", 0) > 0:
                seen[name].append(float(breakdown["compute_s"]))
    return {name: statistics.median(values) for name, values in seen.items() if values}


def achieved_tflops(compute_s: Mapping[str, float], grid: Sequence[Sequence[str]], layers: Sequence[int],
                    training: TrainingSpec) -> dict[str, float]:
    """TFLOPS each member of `grid` achieved: its stage's forward and backward FLOPs of one step (as
    the cost model counts them) over its measured compute seconds."""
    config = get_config(training.model)
    tokens = training.batch // len(grid[0]) * config.context  # one replica's share of a step
    speeds = {}
    for stage, row in enumerate(grid):
        flops = (1.0 + BACKWARD_COMPUTE) * forward_flops_per_token(config, layers, stage) * tokens
        for name in row:
            if compute_s.get(name, 0.0) > 0:
                speeds[name] = flops / compute_s[name] / 1e12
    return speeds


def calibrated_step_s(plan: PlanRecord | Placement, records: Mapping[str, PeerRecord], compute_s: Mapping[str, float],
                      training: TrainingSpec, codecs: Codecs) -> float | None:
    """The cost model's step for `plan` with every member's achieved speed (None unless every member
    has a measured compute time and a record)."""
    members = [name for row in plan.grid for name in row]
    speeds = achieved_tflops(compute_s, plan.grid, plan.layers, training)
    if any(name not in speeds or name not in records for name in members):
        return None
    measured = {name: msgspec.structs.replace(records[name], tflops=speeds[name]) for name in members}
    return predicted_step_s(plan, measured, training, codecs)


def calibration(plan: PlanRecord, step: int, steps: Sequence[Mapping[str, Any]], records: Mapping[str, PeerRecord],
                training: TrainingSpec, codecs: Codecs) -> dict[str, Any] | None:
    """The report event that calibrates `plan`, once its step `step` is committed: at its
    CALIBRATION_STEPS-th step, from the breakdowns the report holds of its steps after the first."""
    if step != plan.start_step + CALIBRATION_STEPS:
        return None
    ran = [entry for entry in steps if entry.get("plan_version") == plan.version and entry["step"] > plan.start_step]
    compute = median_compute_s(ran, plan.members())
    calibrated = calibrated_step_s(plan, records, compute, training, codecs)
    if calibrated is None:
        return None
    speeds = achieved_tflops(compute, plan.grid, plan.layers, training)
    return {"plan_version": plan.version, "predicted_step_s": plan.reason.predicted_step_s,
            "calibrated_step_s": calibrated, "achieved_tflops": {name: round(v, 5) for name, v in speeds.items()},
            "joined_tflops": {name: records[name].tflops for name in speeds}}
