"""The cascade, for real: the only holder of a stage dies while a newcomer is still downloading it.

Five peers in network namespaces: a0..a3 on a fast LAN train a fixed 2 x 2 grid (`--plan`), y
waits as standby behind a 2 Mbit/s link. a2 is SIGKILLed; the repair gives its cell to y, which
starts downloading stage 1 from a3, the stage's only other replica, over the slow link (seconds).
a3 is SIGKILLed during that download. Nobody holds stage 1 now: y never loaded it, so it must not
be named a holder or a donor. The coordinator must restore from the checkpoint, with whoever is
left, and training must go on to the last step instead of passing the stage around forever.
"""
from __future__ import annotations

import json
import os
import signal

import pytest

from swarm.netsim.harness import NetHarness
from swarm.scheduler import Plan, Scenario

from .netlive import NetSwarm, needs_root, tiny_scenario

pytestmark = [pytest.mark.slow, needs_root]

STEPS = 24
EVERY = 3
SCENARIO = tiny_scenario(
    "cascade",
    [*({"id": f"a{i}", "site": "lan", "tflops": 1.0, "memory_gb": 4.0} for i in range(4)),
     {"id": "y", "site": "far", "tflops": 1.0, "memory_gb": 4.0}],
    {"lan": {"bandwidth_gbps": 1.0, "latency_ms": 0.5}, "far": {"bandwidth_gbps": 1.0, "latency_ms": 0.5}},
    stages=2, replicas=2, links=[{"between": ["lan", "far"], "bandwidth_gbps": 0.002, "latency_ms": 5.0}])


def _members(plan):
    return {name for row in plan["grid"] for name in row}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("cascade")
    (work / "scenario.json").write_text(json.dumps(SCENARIO))
    Plan("live", (("a0", "a1"), ("a2", "a3")), (2, 2)).save(work / "plan.json")
    scenario = Scenario.load(work / "scenario.json")
    with NetHarness(scenario, workdir=work / "net", quotas=False, say=lambda text: None) as net:
        swarm = NetSwarm(net, work / "coordinator", [
            "--steps", str(STEPS), "--batch", "8", "--micro-batches", "2", "--plan", str(work / "plan.json"),
            "--checkpoint-every", str(EVERY)])
        for device in net.topology.devices:
            swarm.start_peer(device)
        latest = swarm.dir / "latest.json"
        swarm.wait(lambda: latest.exists() and json.loads(latest.read_text())["step"] >= EVERY, 240,
                   f"the checkpoint of step {EVERY}")
        os.kill(swarm.procs.procs["a2"].pid, signal.SIGKILL)
        downloading = swarm.plan_where(lambda p: p["sources"].get("y") == {"kind": "peer", "donor": "a3"}, 120,
                                       "y told to fetch stage 1 from a3")
        os.kill(swarm.procs.procs["a3"].pid, signal.SIGKILL)
        code = swarm.finish(400)
        yield {"code": code, "downloading": downloading, "report": swarm.report(), "log": swarm.log()}


def test_the_run_finishes_every_step_exactly_once(run):
    assert run["code"] == 0, run["log"]
    assert [entry["step"] for entry in run["report"]["steps"]] == list(range(1, STEPS + 1))


def test_the_lost_stage_is_restored_from_the_checkpoint_not_from_the_newcomer(run):
    plans = run["report"]["plans"]
    after = plans[plans.index(run["downloading"]) + 1:]
    assert after, "no plan followed the cascade"
    repaired = next(p for p in after if "a3" in p["reason"]["lost"])
    assert repaired["reason"]["rolled_back_to"] >= EVERY
    assert {s["kind"] for s in repaired["sources"].values()} == {"checkpoint"}
    for plan in after:  # the dead are never members or donors again, and nobody keeps or donates what it never had
        assert not _members(plan) & {"a2", "a3"}
        assert not {s.get("donor") for s in plan["sources"].values()} & {"a2", "a3"}
    assert len(after) <= 4, [(p["version"], p["reason"]["text"]) for p in after]  # no livelock of repairs
