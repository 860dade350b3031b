"""The network harness's pieces that need no root: path rates, quotas, names, cgroup files, the report math,
and the coordinator's `--plan` flag."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from peers.protocol import PeerRecord
from swarm.coordinator.config import add_arguments, from_args, given_placement
from swarm.netsim.cgroups import PERIOD_US, CpuLimits
from swarm.netsim.check import _slope_mbps
from swarm.netsim.harness import cpu_quotas
from swarm.netsim.links import paths, uplinks_mbps
from swarm.netsim.report import effective_tflops
from swarm.netsim.topology import Topology, owner_pid, run_id
from swarm.scheduler import Scenario

PRESETS = Path(__file__).resolve().parents[2] / "swarm" / "presets" / "net"


def test_paths_follow_the_scenario_rules():
    scenario = Scenario.load(PRESETS / "check4.json")
    by_pair = {(p.src, p.dst): p for p in paths(scenario)}
    assert len(by_pair) == 12
    assert by_pair["a0", "a1"].mbps == pytest.approx(100.0) and by_pair["a0", "a1"].latency_ms == pytest.approx(2.0)
    assert by_pair["b1", "b0"].mbps == pytest.approx(50.0) and by_pair["b1", "b0"].latency_ms == pytest.approx(5.0)
    assert by_pair["a0", "b1"].mbps == pytest.approx(10.0) and by_pair["b1", "a0"].latency_ms == pytest.approx(20.0)
    assert all(p.shaped for p in by_pair.values())
    assert {p.mbps for p in paths(scenario, rate_mbps=20.0)} == {20.0}
    assert not any(p.shaped for p in paths(scenario, unshaped=True))


def test_uplinks_cap_paths_and_are_kept_per_device():
    scenario = Scenario.load(PRESETS / "home-volunteers.json")
    by_pair = {(p.src, p.dst): p for p in paths(scenario)}
    assert by_pair["h0", "h3"].mbps == pytest.approx(10.0)  # capped by h3's 10 Mbit/s uplink
    assert by_pair["h0", "h1"].mbps == pytest.approx(50.0)
    assert uplinks_mbps(scenario)["h2"] == pytest.approx(20.0)


def test_cpu_quotas_follow_relative_tflops():
    scenario = Scenario.load(PRESETS / "home-volunteers.json")
    quotas = cpu_quotas(scenario, 0.5)
    assert quotas == {"h0": 0.5, "h1": 0.5, "h2": 0.5, "h3": 0.25}
    assert max(cpu_quotas(scenario).values()) <= 1.0


def test_names_carry_the_owner_pid_and_fit_interface_limits():
    run = run_id()
    topology = Topology(["a0", "a1"], run)
    assert owner_pid(topology.bridge_ns) == int(run.split("x")[0])
    assert owner_pid("swn-nope") is None and owner_pid("other-123x0-c") is None
    assert all(ns.startswith("swn-") for ns in topology.namespaces)
    assert len({node.address for node in topology.nodes}) == 3
    assert all(len(node.port) <= 15 for node in topology.nodes)
    assert topology.devices["a1"].data_address == "tcp://10.213.1.2:40000"
    assert topology.teardown() == []  # nothing built: nothing to remove, and no error


def test_cgroup_v1_and_v2_files(tmp_path):
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("-1")
    limits = CpuLimits(v1_root=v1, v2_root=tmp_path / "none")
    assert limits.version == 1
    path = limits.create("swn-1x0-d0", 0.25)
    assert (path / "cpu.cfs_quota_us").read_text() == str(PERIOD_US // 4)
    assert (path / "cpu.cfs_period_us").read_text() == str(PERIOD_US)
    assert limits.leftovers() == [path]
    with pytest.raises(ValueError, match="swn-"):
        limits.create("other", 1.0)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory")
    (v2 / "cgroup.subtree_control").write_text("")
    limits = CpuLimits(v1_root=tmp_path / "none", v2_root=v2)
    assert limits.version == 2
    path = limits.create("swn-1x0-d1", 0.5)
    assert (path / "cpu.max").read_text() == f"{PERIOD_US // 2} {PERIOD_US}"
    assert limits.create("swn-1x0-d2", None).joinpath("cpu.max").read_text() == f"max {PERIOD_US}"
    assert CpuLimits(v1_root=tmp_path / "none", v2_root=tmp_path / "none").version is None


def test_rate_is_the_slope_of_bytes_over_time():
    arrivals = [0.0] + [1.0 + 0.1 * i for i in range(40)]  # the first message arrives after set-up: not counted
    sizes = [125_000] * 41
    assert _slope_mbps(arrivals, sizes) == pytest.approx(10.0)
    arrivals[-1] += 0.2  # one late wake-up at the end: first-to-last says 9.5 Mbit/s
    assert 9.8 < _slope_mbps(arrivals, sizes) < 10.0


def test_compute_for_the_prediction_is_one_per_core_speed_scaled_by_quota():
    records = {"a": {"tflops": 0.04}, "b": {"tflops": 0.018}, "c": {"tflops": 0.041}}
    cores = {"a": 0.4, "b": 0.2, "c": 0.4}
    used = effective_tflops(records, cores)
    assert used["a"] == pytest.approx(0.04) and used["b"] == pytest.approx(0.02)
    assert effective_tflops(records, {}) == {"a": 0.04, "b": 0.018, "c": 0.041}
    assert effective_tflops({}, cores) == {}


def _coordinator_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--steps", "5", "--batch", "8", "--micro-batches", "2",
                              "--checkpoint-dir", str(tmp_path / "run"), *extra])


def _plan_file(tmp_path: Path, grid: list[list[str]], layers: list[int]) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"scenario": "x", "stages": len(grid), "replicas": len(grid[0]), "grid": grid,
                                "layers": layers, "predicted": {}}))
    return path


def test_coordinator_plan_flag_fixes_the_first_placement(tmp_path):
    plan = _plan_file(tmp_path, [["a0", "b0"], ["a1", "b1"]], [1, 3])
    config = from_args(_coordinator_args(tmp_path, "--plan", str(plan)))
    assert (config.stages, config.replicas, config.min_peers) == (2, 2, 4)
    assert config.plan is not None and config.plan.layers == (1, 3)
    record = {n: PeerRecord(name=n, address=f"tcp://10.0.0.1:{i + 1}", device="cpu", tflops=1.0, memory_gb=1.0)
              for i, n in enumerate(["a0", "a1", "b0", "b1", "spare"])}
    assert given_placement(config.plan, {n: record[n] for n in ["a0", "a1", "b0"]}) is None  # waits for b1
    placement = given_placement(config.plan, record)
    assert placement is not None
    assert placement.grid == [["a0", "b0"], ["a1", "b1"]] and placement.layers == [1, 3]
    assert placement.standby == ["spare"] and "--plan" in placement.reason.text
    assert from_args(_coordinator_args(tmp_path, "--plan", str(plan), "--stages", "2", "--replicas", "2")).plan


@pytest.mark.parametrize(("grid", "layers", "extra", "why"), [
    ([["a", "b"], ["c", "d"]], [2, 1], (), "add up to 3"),
    ([["a", "b"], ["a", "d"]], [2, 2], (), "appears twice"),
    ([["a", "b", "c"], ["d", "e", "f"]], [2, 2], (), "split evenly"),
    ([["a", "b"], ["c", "d"]], [2, 2], ("--min-peers", "4"), "sets the grid"),
    ([["a", "b"], ["c", "d"]], [2, 2], ("--stages", "4", "--replicas", "1"), "sets the grid"),
])
def test_coordinator_plan_flag_errors_name_the_flag(tmp_path, grid, layers, extra, why):
    plan = _plan_file(tmp_path, grid, layers)
    with pytest.raises(ValueError, match=why) as error:
        from_args(_coordinator_args(tmp_path, "--plan", str(plan), *extra))
    assert "--plan" in str(error.value)


def test_coordinator_plan_flag_reports_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="--plan"):
        from_args(_coordinator_args(tmp_path, "--plan", str(tmp_path / "missing.json")))


def test_net_cli_registers_its_subcommands():
    from swarm.cli.sim import build_parser

    parser = build_parser()
    args = parser.parse_args(["net", "run", "x.json", "--steps", "3", "--plan", "p.json", "--fwd-delta"])
    assert args.net_command == "run" and args.steps == 3 and args.fwd is None and args.fwd_delta
    assert parser.parse_args(["net", "check", "x.json", "--json"]).json
    assert parser.parse_args(["net", "clean"]).net_command == "clean"
