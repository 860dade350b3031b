"""The live swarm's resume: the coordinator dies after a checkpoint and comes back with --resume.

The coordinator listens on a fixed port and keeps its identity in the checkpoint directory, so the
restarted process has the same multiaddr and the running peers find it again. It publishes a plan
newer than any before, starting at the checkpointed step + 1; every peer reloads its stage from
the checkpoint (the coordinator serves it) and training runs to the last step.
"""
from __future__ import annotations

import json
import signal

import pytest

from swarm.launcher import LocalSwarm, free_port

pytestmark = pytest.mark.slow

STEPS = 24
EVERY = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with LocalSwarm(tmp_path_factory.mktemp("resume")) as swarm:
        args = ["--listen", f"127.0.0.1:{free_port()}", "--steps", str(STEPS), "--batch", "8", "--micro-batches", "2",
                "--stages", "2", "--replicas", "2", "--checkpoint-every", str(EVERY)]
        swarm.start_coordinator(args)
        for name in ("p1", "p2", "p3", "p4"):
            swarm.start_peer(name)
        latest = swarm.checkpoint_dir / "latest.json"
        swarm.wait_for(lambda: latest.exists() and json.loads(latest.read_text())["step"] >= EVERY, 180,
                       f"the checkpoint of step {EVERY}")
        swarm.kill("coordinator", signal.SIGKILL)
        swarm.wait_exit("coordinator", 30)
        checkpointed = json.loads(latest.read_text())["step"]
        before = swarm.report()
        swarm.start_coordinator([*args, "--resume"], name="coordinator2")
        code = swarm.wait_exit("coordinator2", 240)
        codes = {name: swarm.wait_exit(name, 30) for name in ("p1", "p2", "p3", "p4")}
        yield {"swarm": swarm, "code": code, "codes": codes, "checkpointed": checkpointed, "before": before,
               "report": swarm.report()}


def test_resumed_coordinator_finishes_and_peers_exit_cleanly(run):
    assert run["code"] == 0, run["swarm"].log("coordinator2")[-3000:]
    assert set(run["codes"].values()) == {0}, run["codes"]


def test_training_continues_from_the_checkpointed_step(run):
    k = run["checkpointed"]
    resumed = next(p for p in run["report"]["plans"] if p["reason"]["change"] == "resumed")
    assert f"step {k}" in resumed["reason"]["text"]
    assert resumed["start_step"] == k + 1
    assert {s["kind"] for s in resumed["sources"].values()} == {"checkpoint"}
    assert resumed["version"] > max(p["version"] for p in run["before"]["plans"])
    # steps the first coordinator committed after its checkpoint were abandoned by the rollback and rerun
    # once: the report's timeline is every step exactly once
    assert [entry["step"] for entry in run["report"]["steps"]] == list(range(1, STEPS + 1))
    assert [e["step"] for e in run["report"]["steps"][:k]] == [e["step"] for e in run["before"]["steps"][:k]]
    rollback = next(e for e in run["report"]["events"] if e["event"] == "rollback")
    assert rollback["to_step"] == k
    assert rollback["abandoned_steps"] == [e["step"] for e in run["before"]["steps"] if e["step"] > k]


def test_replicas_agree_after_the_resume(run):
    report = run["report"]
    assert not report["mismatches"]
    late = [stage for step, per_step in report["checksums"].items() if int(step) > run["checkpointed"] + 1
            for stage in per_step.values()]
    assert late and all(len(set(stage.values())) == 1 for stage in late)
