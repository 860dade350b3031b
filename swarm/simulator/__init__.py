"""Discrete-event simulation of a planned swarm: iterations, stragglers, churn and re-planning.

    report = simulate(scenario, plan, steps=20, churn_per_hour=30, seed=0)
    report.throughput      # sequences per second of each committed step
"""
from swarm.simulator.iteration import IterationResult, simulate_iteration
from swarm.simulator.training import SimulationReport, StepRecord, simulate

__all__ = ["simulate", "SimulationReport", "StepRecord", "simulate_iteration", "IterationResult"]
