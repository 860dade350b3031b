"""The bandwidth-aware scheduler: scenarios, plans, the two cost models, search and re-planning.

What the coordinator and `swarm-sim` call:
    scenario = Scenario.load("swarm.json")            # or Scenario.preset("dtfm-5")
    best = plan(scenario, cost_model="full", seed=0, time_limit=5.0)
    best.save("plan.json"); predict(scenario, best, "full").iteration_s
    new, moved = replan(scenario.with_devices(live), best, seed=0, time_limit=1.0)
All bad input raises `ScenarioError` / `PlanError` (both `ValueError`) naming the field.
"""
from swarm.scheduler.cost import Breakdown, cost_model
from swarm.scheduler.plan import Plan, PlanError
from swarm.scheduler.replan import moved_peers, replan
from swarm.scheduler.scenario import Device, Scenario, ScenarioError, preset_names
from swarm.scheduler.search import plan, predict

__all__ = ["Scenario", "ScenarioError", "Device", "Plan", "PlanError", "Breakdown", "plan", "predict",
           "replan", "moved_peers", "cost_model", "preset_names"]
