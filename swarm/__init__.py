"""The whole-swarm view: coordinator, scheduler, simulators, network harness, `swarm status`.

Imports flow one way: `swarm` -> `peers` -> `models`, `compression`.

The scheduler's API is re-exported here (numpy, msgspec and the torch-free model arithmetic; torch
loads only when a workload prices messages through the codecs):

    scenario = swarm.Scenario.load("swarm.json")
    best = swarm.plan(scenario, cost_model="full", seed=0, time_limit=5.0)
    new, moved = swarm.replan(scenario.with_devices(live), best, tolerance=None)

The daemons are imported from their packages, not from here, because they load hivemind (whose
import installs a log handler) and torch: `from swarm.coordinator import Coordinator,
CoordinatorConfig`; the one-process grid is `from swarm.local import LocalConfig, run_local`.
"""
from swarm.scheduler import (
    Breakdown,
    Device,
    Plan,
    PlanError,
    Scenario,
    ScenarioError,
    cost_model,
    moved_peers,
    plan,
    predict,
    preset_names,
    replan,
)

__all__ = ["Scenario", "ScenarioError", "Device", "Plan", "PlanError", "Breakdown", "plan", "predict", "replan",
           "moved_peers", "cost_model", "preset_names"]
