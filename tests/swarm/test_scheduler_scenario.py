"""Scenario and plan files: the JSON contract of DESIGN.md section 3 and its strict validation."""
import copy
import json

import pytest

from swarm.scheduler import Plan, PlanError, Scenario, ScenarioError, preset_names
from tests.swarm.test_cost_formulas import TINY, tiny


def broken(**changes):
    data = copy.deepcopy(TINY)
    data.update(changes)
    return data


@pytest.mark.parametrize("change, message", [
    ({"devices": TINY["devices"] + [dict(TINY["devices"][0])]}, "devices[4].id: duplicate id 'a0'"),
    ({"devices": [dict(TINY["devices"][0], site="C")]}, "devices[0].site: unknown site 'C'"),
    ({"links": []}, "no link between sites 'A' and 'B'"),
    ({"links": [{"between": ["A", "B"], "bandwidth_gbps": 0, "latency_ms": 1}]}, "links[0].bandwidth_gbps: must be positive"),
    ({"links": [{"between": ["A", "B"], "bandwidth_gbps": -1.0, "latency_ms": 1}]}, "must be positive"),
    ({"sites": {"A": {"bandwidth_gbps": 8.0, "latency_ms": -1}, "B": TINY["sites"]["B"]}}, "sites.A.latency_ms: must be non-negative"),
    ({"parallelism": {"stages": 3, "replicas": 1}}, "2 layers cannot be split into 3 stages"),
    ({"parallelism": {"stages": 2, "replicas": 3}}, "needs 6 devices, the scenario has 4"),
    ({"model": dict(TINY["model"], layers=0)}, "model.layers: expected a positive integer"),
    ({"batch": {"global_sequences": 4, "micro_sequences": 3}}, "batch.micro_sequences: 3 does not divide"),
    ({"compression": {"forward_bits": 12}}, "compression.forward_bits: 12 is not a supported width"),
    ({"devices": [dict(TINY["devices"][0], tflops="fast")]}, "devices[0].tflops: expected a number"),
    ({"extra": 1}, "scenario: unknown field 'extra'"),
    ({"devices": [dict(TINY["devices"][0], gpu="v100")]}, "devices[0]: unknown field 'gpu'"),
    ({"devices": [], "parallelism": None}, "scenario.devices: expected at least one device"),
    ({"devices": [dict(TINY["devices"][0], id=5)]}, "devices[0].id: expected a non-empty string"),
    ({"devices": [dict(TINY["devices"][0], memory_gb=float("inf"))]}, "devices[0].memory_gb: must be positive and finite"),
    ({"links": TINY["links"] * 2}, "links[1]: a second link between 'A' and 'B'"),
])
def test_bad_scenarios_name_the_field(change, message):
    with pytest.raises(ScenarioError) as error:
        Scenario.from_dict(broken(**change))
    assert message in str(error.value)


def test_missing_required_field():
    data = broken()
    del data["model"]
    with pytest.raises(ScenarioError, match=r"scenario.model: required field is missing"):
        Scenario.from_dict(data)


def test_round_trip_and_file_errors(tmp_path):
    scenario = tiny()
    path = tmp_path / "s.json"
    scenario.save(path)
    assert Scenario.load(path) == scenario
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        Scenario.load(tmp_path / "bad.json")
    with pytest.raises(ScenarioError, match="cannot read scenario file"):
        Scenario.load(tmp_path / "missing.json")


def test_presets_are_packaged_and_follow_dtfm():
    assert preset_names() == ["dtfm-1", "dtfm-2", "dtfm-3", "dtfm-4", "dtfm-5"]
    for name in preset_names():
        scenario = Scenario.preset(name)
        assert len(scenario.devices) == 64
        assert (scenario.parallelism.stages, scenario.parallelism.replicas) == (8, 8)
        assert scenario.model.layers == 24 and scenario.batch.global_sequences == 1024
    world = Scenario.preset("dtfm-5")
    bandwidths = [l.bandwidth_gbps for l in world.links]
    latencies = [l.latency_ms for l in world.links]
    assert (min(bandwidths), max(bandwidths), min(latencies), max(latencies)) == (0.34, 1.16, 11.0, 238.0)
    with pytest.raises(ScenarioError, match="unknown preset 'dtfm-9'"):
        Scenario.preset("dtfm-9")


def test_measured_links_put_each_peer_in_its_own_site():
    devices = [{"id": f"p{i}", "tflops": 10.0, "memory_gb": 24.0} for i in range(3)]
    scenario = Scenario.from_measurements(
        "live", devices, {("p0", "p1"): (1.0, 20.0), ("p2", "p1"): (0.1, 50.0)},
        TINY["model"], TINY["batch"], fallback=(0.05, 200.0))
    net, index = scenario.network, scenario.index
    assert net.bandwidth(index["p1"], index["p0"]) == pytest.approx(1.0e9 / 8)
    assert net.latency(index["p1"], index["p2"]) == pytest.approx(0.050)
    assert net.bandwidth(index["p0"], index["p2"]) == pytest.approx(0.05e9 / 8)   # not measured


def test_with_devices_keeps_stages_and_drops_replicas():
    scenario = tiny()
    smaller = scenario.with_devices(scenario.devices[:3])
    assert (smaller.parallelism.stages, smaller.parallelism.replicas) == (2, 1)
    with pytest.raises(ScenarioError, match="cannot hold 2 stages"):
        scenario.with_devices(scenario.devices[:1])


def plan_dict(**changes):
    data = {"scenario": "tiny", "stages": 2, "replicas": 2, "grid": [["a0", "b0"], ["a1", "b1"]],
            "layers": [1, 1], "predicted": {"iteration_s": 1.0}}
    data.update(changes)
    return data


@pytest.mark.parametrize("change, message", [
    ({"grid": [["a0", "zz"], ["a1", "b1"]]}, "plan.grid[0][1]: unknown device id 'zz'"),
    ({"grid": [["a0", "b0"], ["a0", "b1"]]}, "plan.grid[1][0]: device 'a0' appears twice"),
    ({"layers": [2, 1]}, "plan.layers: sum is 3, the model has 2 layers"),
    ({"scenario": "other"}, "plan.scenario: the plan is for scenario 'other', not 'tiny'"),
])
def test_plan_validation_against_scenario(change, message):
    with pytest.raises(PlanError) as error:
        Plan.from_dict(plan_dict(**change)).validate(tiny())
    assert message in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"stages": 3}, "plan.grid: 2 rows but stages is 3"),
    ({"grid": [["a0"], ["a1", "b1"]]}, "plan.grid[0]: 1 devices but replicas is 2"),
    ({"layers": [0, 2]}, "plan.layers: need one count >= 1 per stage"),
    ({"colour": "red"}, "plan: unknown field 'colour'"),
    ({"stages": "2"}, "plan.stages: expected a positive integer, got '2'"),
    ({"replicas": True}, "plan.replicas: expected a positive integer, got True"),
    ({"scenario": 3}, "plan.scenario: expected the scenario's name"),
    ({"cost_model": "megatron"}, "plan.cost_model: unknown model 'megatron'"),
    ({"predicted": {"iteration_s": "fast"}}, "plan.predicted.iteration_s: expected seconds"),
])
def test_malformed_plans(change, message):
    with pytest.raises(PlanError) as error:
        Plan.from_dict(plan_dict(**change))
    assert message in str(error.value)


def test_plan_file_round_trip(tmp_path):
    plan = Plan.from_dict(plan_dict())
    plan.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json") == plan
    assert json.loads((tmp_path / "p.json").read_text())["grid"][1] == ["a1", "b1"]
