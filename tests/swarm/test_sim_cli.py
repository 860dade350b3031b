"""`swarm-sim plan` and `swarm-sim simulate` as a user runs them: real processes, files, exit codes."""
import json
import subprocess
import sys

import pytest

from swarm.cli.sim import main
from swarm.scheduler import Plan, Scenario
from tests.swarm.test_cost_formulas import TINY


def swarm_sim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swarm.cli.sim", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_plan_then_simulate_a_preset_in_real_processes(tmp_path):
    plan_file = tmp_path / "plan.json"
    planned = swarm_sim("plan", "--preset", "dtfm-5", "--cost-model", "dtfm", "--time-limit", "1",
                        "--random-samples", "200", "--out", str(plan_file))
    assert planned.returncode == 0, planned.stderr
    assert "best of 200 random" in planned.stdout and "lower bound" in planned.stdout
    plan = Plan.load(plan_file).validate(Scenario.preset("dtfm-5"))
    assert plan.cost_model == "dtfm" and (plan.stages, plan.replicas) == (8, 8)
    report_file = tmp_path / "report.json"
    simulated = swarm_sim("simulate", "--preset", "dtfm-5", "--plan", str(plan_file), "--steps", "2",
                          "--out", str(report_file))
    assert simulated.returncode == 0, simulated.stderr
    assert "sequences / s" in simulated.stdout
    report = json.loads(report_file.read_text())
    assert len(report["steps"]) == 2 and report["aborted_steps"] == 0


def test_plan_json_output_for_a_scenario_file(tmp_path, capsys):
    scenario_file = tmp_path / "tiny.json"
    scenario_file.write_text(json.dumps(TINY))
    assert main(["plan", str(scenario_file), "--time-limit", "1", "--random-samples", "50", "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["plan"]["scenario"] == "tiny"
    assert set(output["plan"]["predicted"]) == {"iteration_s", "compute_s", "pipeline_s", "data_parallel_s",
                                                "control_s"}
    compare = output["compare"]
    assert compare["plan"] <= compare["best of 50 random"] and compare["lower bound"] <= compare["plan"]


@pytest.mark.parametrize("argv, message", [
    (["plan"], "give either a SCENARIO.json file or --preset NAME"),
    (["plan", "--preset", "dtfm-9"], "unknown preset 'dtfm-9'"),
    (["plan", "missing.json"], "cannot read scenario file missing.json"),
    (["simulate", "--preset", "dtfm-1", "--plan", "missing.json", "--steps", "1"], "cannot read plan file"),
])
def test_bad_input_exits_2_with_the_reason(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_plan_for_another_scenario_is_refused(tmp_path, capsys):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"scenario": "tiny", "stages": 2, "replicas": 2, "layers": [1, 1],
                                     "grid": [["a0", "b0"], ["a1", "b1"]]}))
    assert main(["simulate", "--preset", "dtfm-1", "--plan", str(plan_file), "--steps", "1"]) == 2
    assert "unknown device id 'a0'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["plan", "--preset", "dtfm-1", "--time-limit", "0"],
    ["plan", "--preset", "dtfm-1", "--cost-model", "megatron"],
    ["simulate", "--preset", "dtfm-1", "--plan", "p.json", "--steps", "0"],
    ["simulate", "--preset", "dtfm-1", "--plan", "p.json", "--steps", "1", "--churn", "-3"],
])
def test_bad_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_help_names_the_contract_flags(capsys):
    for command, flags in (("plan", ["--cost-model", "--seed", "--time-limit", "--out"]),
                           ("simulate", ["--plan", "--steps", "--churn", "--seed"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(flag in text for flag in flags)
