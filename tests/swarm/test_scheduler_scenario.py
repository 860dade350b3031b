"""Scenario and plan files: the JSON contract shared with the coordinator, and its strict validation."""
import copy
import json

import pytest

from swarm.scheduler import Plan, PlanError, Scenario, ScenarioError, preset_names
from tests.swarm.test_cost_formulas import TINY, tiny


def broken(**changes):
    data = copy.deepcopy(TINY)
    data.update(changes)
    return data


LINK = {"between": ["A", "B"], "bandwidth_gbps": 0.8, "latency_ms": 1.0}


@pytest.mark.parametrize("change, message", [
    ({"devices": TINY["devices"] + [dict(TINY["devices"][0])]},
     "duplicate id 'a0'; ids must be unique - at `$.devices[4].id`"),
    ({"devices": [dict(TINY["devices"][0], site="C")]},
     "unknown site 'C'; add it to \"sites\" - at `$.devices[0].site`"),
    ({"links": []}, "no link between sites 'A' and 'B'"),
    ({"links": [dict(LINK, bandwidth_gbps=0)]}, "Expected `float` > 0.0, got 0 - at `$.links[0].bandwidth_gbps`"),
    ({"links": [dict(LINK, bandwidth_gbps=-1.0)]}, "Expected `float` > 0.0, got -1.0"),
    ({"links": [dict(LINK, between=["A", "A"])]}, "a link joins two different sites"),
    ({"links": [dict(LINK, between=["A", "C"])]}, "unknown site 'C'; add it to \"sites\" - at `$.links[0].between`"),
    ({"sites": {"A": {"bandwidth_gbps": 8.0, "latency_ms": -1}, "B": TINY["sites"]["B"]}},
     "Expected `float` >= 0.0, got -1 - at `$.sites.A.latency_ms`"),
    ({"parallelism": {"stages": 3, "replicas": 1}}, "2 layers cannot be split into 3 stages"),
    ({"parallelism": {"stages": 2, "replicas": 3}}, "needs 6 devices, the scenario has 4"),
    ({"model": dict(TINY["model"], layers=0)}, "Expected `int` >= 1, got 0 - at `$.model.layers`"),
    ({"model": dict(TINY["model"], heads=3)}, "d_model 4 is not divisible by heads 3 - at `$.model`"),
    ({"batch": {"global_sequences": 4, "micro_sequences": 3}},
     "micro_sequences: 3 does not divide global_sequences 4 - at `$.batch`"),
    ({"compression": {"forward_bits": 12}}, "forward_bits: 12 is not a supported width; use 1-8, 16 or 32"),
    ({"compression": {"gradient": "q33"}}, "gradient: unknown codec 'q33'"),
    ({"compression": {"forward": "q3", "forward_bits": 3}}, "give either forward_bits or forward, not both"),
    ({"compression": {"gradient": 4}}, "Expected `str | null`, got `int` - at `$.compression.gradient`"),
    ({"devices": [dict(TINY["devices"][0], tflops="fast")]}, "Expected `float`, got `str` - at `$.devices[0].tflops`"),
    ({"extra": 1}, "scenario: Object contains unknown field `extra`"),
    ({"devices": [dict(TINY["devices"][0], gpu="v100")]}, "unknown field `gpu` - at `$.devices[0]`"),
    ({"devices": [], "parallelism": None}, "Expected `array` of length >= 1, got [] - at `$.devices`"),
    ({"devices": [dict(TINY["devices"][0], id=5)]}, "Expected `str`, got `int` - at `$.devices[0].id`"),
    ({"devices": [dict(TINY["devices"][0], memory_gb=float("inf"))]},
     "memory_gb: must be finite, got inf - at `$.devices[0]`"),
    ({"links": TINY["links"] * 2}, "a second link between 'A' and 'B' - at `$.links[1]`"),
    ({"devices": [dict(TINY["devices"][0], codec_gvalues=0)]},
     "Expected `float` > 0.0, got 0 - at `$.devices[0].codec_gvalues`"),
    ({"control": {"commit_s": -1}}, "Expected `float` >= 0.0, got -1 - at `$.control.commit_s`"),
    ({"control": {"commit": 0.1}}, "unknown field `commit` - at `$.control`"),
])
def test_bad_scenarios_name_the_field(change, message):
    with pytest.raises(ScenarioError) as error:
        Scenario.from_dict(broken(**change))
    assert message in str(error.value)


def test_missing_required_field():
    data = broken()
    del data["model"]
    with pytest.raises(ScenarioError, match=r"scenario: Object missing required field `model`"):
        Scenario.from_dict(data)


def test_compression_by_codec_name():
    named = tiny(compression={"forward": "q3", "backward": "q6", "gradient": "cocktail"})
    assert named.compression.codecs == {"forward": "q3", "backward": "q6", "gradient": "cocktail"}
    assert tiny(compression={"forward_bits": 3, "gradient_bits": 32}).compression.codecs == {
        "forward": "q3", "backward": "fp16", "gradient": "none"}
    assert Scenario.from_dict(named.to_dict()) == named


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
    bandwidths = [link.bandwidth_gbps for link in world.links]
    latencies = [link.latency_ms for link in world.links]
    assert (min(bandwidths), max(bandwidths), min(latencies), max(latencies)) == (0.34, 1.16, 11.0, 238.0)
    with pytest.raises(ScenarioError, match="unknown preset 'dtfm-9'"):
        Scenario.preset("dtfm-9")


def test_measured_links_put_each_peer_in_its_own_site():
    devices = [{"id": f"p{i}", "tflops": 10.0, "memory_gb": 24.0} for i in range(4)]
    scenario = Scenario.from_measurements(
        "live", devices, {("p0", "p1"): (1.0, 20.0), ("p2", "p1"): (0.1, 50.0)},
        TINY["model"], TINY["batch"], fallback=(0.05, 200.0))
    net, index = scenario.network, scenario.index
    assert net.bandwidth(index["p1"], index["p0"]) == pytest.approx(1.0e9 / 8)
    assert net.latency(index["p1"], index["p2"]) == pytest.approx(0.050)
    # not measured: the worse of its ends' typical links (p0's 1 Gbit/s and 20 ms, p2's 0.1 and 50)
    assert net.bandwidth(index["p0"], index["p2"]) == pytest.approx(0.1e9 / 8)
    assert net.latency(index["p0"], index["p2"]) == pytest.approx(0.050)
    # p3 measured nothing: the fallback
    assert net.bandwidth(index["p3"], index["p1"]) == pytest.approx(0.05e9 / 8)
    assert net.latency(index["p3"], index["p0"]) == pytest.approx(0.200)


def test_measured_codec_rates_and_commit_round_trip_pass_through():
    devices = [{"id": "p0", "tflops": 10.0, "memory_gb": 24.0, "codec_gvalues": 0.4},
               {"id": "p1", "tflops": 10.0, "memory_gb": 24.0}]
    scenario = Scenario.from_measurements("live", devices, {}, TINY["model"], TINY["batch"],
                                          control={"commit_s": 0.03})
    assert [d.codec_gvalues for d in scenario.devices] == [0.4, None]
    assert scenario.control.commit_s == 0.03
    assert scenario.with_devices(scenario.devices[:1]).control == scenario.control
    assert Scenario.from_dict(scenario.to_dict()) == scenario
    # absent, neither appears in the file: the presets' and old scenarios' files stay as they were
    assert "control" not in tiny().to_dict() and "codec_gvalues" not in tiny().to_dict()["devices"][0]


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
    ({"stages": 3}, "plan: 2 rows but stages is 3 - at `$.grid`"),
    ({"grid": [["a0"], ["a1", "b1"]]}, "plan: 1 devices but replicas is 2 - at `$.grid[0]`"),
    ({"grid": [["a0", "b0"], []]}, "Expected `array` of length >= 1, got [] - at `$.grid[1]`"),
    ({"layers": [0, 2]}, "plan: Expected `int` >= 1, got 0 - at `$.layers[0]`"),
    ({"layers": [2]}, "plan: need one layer count per stage (2), got [2] - at `$.layers`"),
    ({"colour": "red"}, "plan: Object contains unknown field `colour`"),
    ({"stages": "2"}, "plan: Expected `int`, got `str` - at `$.stages`"),
    ({"replicas": True}, "plan: Expected `int`, got `bool` - at `$.replicas`"),
    ({"scenario": 3}, "plan: Expected `str`, got `int` - at `$.scenario`"),
    ({"cost_model": "megatron"}, "plan: unknown model 'megatron'; one of full, dtfm - at `$.cost_model`"),
    ({"predicted": {"iteration_s": "fast"}}, "plan: Expected `float`, got `str` - at `$.predicted.iteration_s`"),
    ({"predicted": {"speed": 1.0}}, "plan: Invalid enum value 'speed' - at `key` in `$.predicted`"),
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
