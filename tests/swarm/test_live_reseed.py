"""A stage that loses its only replica before the first checkpoint starts over from the seed.

2 stages x 1 replica with a standby, no checkpoint before the end: the stage-1 peer is SIGKILLed;
with nothing to roll back to, the standby takes the cell initialised from the run's seed (stage 0
keeps its state), the report says so, and training reaches its last step instead of waiting forever.
"""
from __future__ import annotations

import signal

import pytest

from swarm.coordinator.planning import MIN_STEPS_BETWEEN_CHANGES
from swarm.launcher import LocalSwarm

pytestmark = pytest.mark.slow

STEPS = 60


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with LocalSwarm(tmp_path_factory.mktemp("reseed")) as swarm:
        swarm.start_coordinator(["--steps", str(STEPS), "--batch", "4", "--micro-batches", "2", "--stages", "2",
                                 "--replicas", "1", "--checkpoint-every", "1000"])
        for name in ("p1", "p2", "p3"):
            swarm.start_peer(name)
        # The standby may also make the coordinator re-split the layers (it measured faster than a member):
        # pick the victim once the latest plan has run a few steps, so it is the stage-1 peer of the plan
        # that holds the state, not of one being replaced.
        swarm.wait_for(lambda: len(plans := swarm.report().get("plans", [])) >= 2 and swarm.committed_step()
                       >= max(3, plans[-1]["start_step"] + MIN_STEPS_BETWEEN_CHANGES), 180,
                       "the third peer standby and the latest plan settled")
        plan = swarm.report()["plans"][-1]
        victim = plan["grid"][1][0]
        swarm.kill(victim, signal.SIGKILL)
        code = swarm.wait_exit("coordinator", 240)
        yield {"swarm": swarm, "code": code, "report": swarm.report(), "victim": victim}


def test_the_lost_stage_starts_from_the_seed_and_training_finishes(run):
    assert run["code"] == 0, run["swarm"].log("coordinator")[-3000:]
    report = run["report"]
    assert report["steps"][-1]["step"] == STEPS
    restarted = [e for e in report["events"] if e["event"] == "stages_restarted"]
    assert restarted and restarted[0]["stages"] == [1]
    repaired = next(p for p in report["plans"] if run["victim"] in p["reason"]["lost"])
    newcomer = repaired["grid"][1][0]
    assert repaired["sources"][newcomer]["kind"] == "init" and "seeded anew" in repaired["reason"]["text"]
    assert repaired["sources"][repaired["grid"][0][0]]["kind"] == "keep"
