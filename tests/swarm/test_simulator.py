"""The discrete-event simulator against the `full` cost model, and training runs with churn.

Plans come from full (deterministic) searches: a time limit is only a safety cap, so the same
plan is simulated however busy the machine is.
"""
import functools

import numpy as np
import pytest

from models import even_layers
from swarm.scheduler import Scenario, plan, predict
from swarm.scheduler.construct import locality_pipeline
from swarm.scheduler.cost import FullCost
from swarm.scheduler.search import Candidate, to_plan
from swarm.scheduler.synthetic import volunteer_scenario
from swarm.simulator import simulate, simulate_iteration
from tests.swarm.test_cost_formulas import GRID, LAYERS, TINY, full_by_hand, tiny


@functools.lru_cache(maxsize=None)
def planned_preset(name: str):
    scenario = Scenario.preset(name)
    return scenario, plan(scenario, "full", seed=0, time_limit=120)


def test_iteration_matches_the_hand_computed_cost():
    # the tiny swarm of test_cost_formulas: the pipeline to stage 0 done, then its all-reduce
    # across the A-B link, composed by hand there
    result = simulate_iteration(tiny(), GRID, LAYERS)
    assert result.seconds == pytest.approx(full_by_hand()["iteration"], rel=1e-9)
    # pipelines x micro-batches x stages x directions x (arrival, compute done)
    assert result.events == 2 * 2 * 2 * 2 * 2


@pytest.mark.parametrize("preset", ["dtfm-1", "dtfm-2", "dtfm-3", "dtfm-4", "dtfm-5"])
def test_simulator_and_cost_model_agree_within_ten_percent_on_the_presets(preset):
    scenario, planned = planned_preset(preset)
    simulated = simulate_iteration(scenario, planned.indices(scenario), np.array(planned.layers)).seconds
    assert simulated == pytest.approx(planned.predicted["iteration_s"], rel=0.10)


def test_agreement_on_a_volunteer_swarm_with_uplinks():
    scenario = volunteer_scenario(48, 8, seed=2, parallelism={"stages": 6, "replicas": 8})
    planned = plan(scenario, "full", seed=0, time_limit=120)
    simulated = simulate_iteration(scenario, planned.indices(scenario), np.array(planned.layers)).seconds
    assert simulated == pytest.approx(planned.predicted["iteration_s"], rel=0.10)


def test_stragglers_and_jitter_slow_an_iteration_down():
    scenario, planned = planned_preset("dtfm-1")
    grid, layers = planned.indices(scenario), np.array(planned.layers)
    calm = simulate_iteration(scenario, grid, layers).seconds
    slow = np.ones(len(scenario.devices))
    slow[grid[3, 2]] = 2.0
    assert simulate_iteration(scenario, grid, layers, slowdown=slow).seconds > 1.2 * calm
    noisy = simulate_iteration(scenario, grid, layers, np.random.default_rng(0), jitter=0.2).seconds
    assert noisy != calm and noisy == pytest.approx(calm, rel=0.3)


def test_training_without_churn_runs_at_the_predicted_speed():
    scenario, planned = planned_preset("dtfm-3")
    report = simulate(scenario, planned, steps=3, jitter=0.0, stragglers=0.0)
    assert [s.step for s in report.steps] == [1, 2, 3]
    assert report.aborted_steps == report.left == report.joined == report.replans == 0
    for step in report.steps:
        assert step.seconds == pytest.approx(step.predicted_s, rel=0.10)
        assert step.sequences_per_s == pytest.approx(1024 / step.seconds)


def test_churn_aborts_steps_and_replans():
    scenario = volunteer_scenario(24, 4, seed=4, model={"layers": 8, "d_model": 512, "heads": 8,
                                                         "seq_len": 256, "vocab": 8000}, global_sequences=64,
                                  parallelism={"stages": 4, "replicas": 5})
    planned = plan(scenario, "full", seed=0, time_limit=120)
    step_s = planned.predicted["iteration_s"]
    report = simulate(scenario, planned, steps=6, churn_per_hour=3600 / (2 * step_s), seed=7,
                      replan_time_limit=60)   # a departure every other step on average
    assert len(report.steps) == 6 and not report.stalled
    assert report.left > 0 and report.replans > 0
    assert report.aborted_steps <= report.left
    assert [s.end_s for s in report.steps] == sorted(s.end_s for s in report.steps)
    assert report.steps[-1].end_s >= sum(s.seconds for s in report.steps) + report.lost_s


def test_a_run_without_churn_is_deterministic_for_a_seed():
    scenario, planned = planned_preset("dtfm-4")
    first, second, other = (simulate(scenario, planned, steps=2, seed=k) for k in (3, 3, 4))
    assert first.to_dict() == second.to_dict() != other.to_dict()


@pytest.mark.slow
def test_ten_thousand_devices_with_churn():
    scenario = volunteer_scenario(10_000, 32, seed=0, parallelism={"stages": 24, "replicas": 416})
    model = FullCost(scenario, 24, 416)
    grid = locality_pipeline(scenario, 24, 416)
    layers = np.asarray(even_layers(24, 24))
    planned = to_plan(Candidate(model, grid, layers, model.score(grid, layers)))
    report = simulate(scenario, planned, steps=2, churn_per_hour=3600 / planned.predicted["iteration_s"],
                      seed=1, replan_time_limit=1.0)
    assert len(report.steps) == 2 and report.left + report.joined > 0
    assert report.events > 100_000
    assert all(s.devices <= 10_000 for s in report.steps)
    assert predict(scenario, planned).iteration_s == pytest.approx(planned.predicted["iteration_s"])


def test_churn_faster_than_a_step_stops_instead_of_hanging():
    scenario = Scenario.from_dict(TINY)
    planned = plan(scenario, "full", seed=0, time_limit=0.5)
    report = simulate(scenario, planned, steps=3, churn_per_hour=3600 * 1000, seed=0, replan_time_limit=0.05)
    assert report.stalled and len(report.steps) < 3
