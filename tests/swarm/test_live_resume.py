"""The live swarm's resume: the coordinator dies and comes back with --resume.

The coordinator listens on a fixed port and keeps its identity in the checkpoint directory, so the
restarted process has the same multiaddr and the running peers find it again.

- Killed between two checkpoints while every peer lives: it continues from the step the live peers
  committed (they keep their state; nothing rolls back, no step is run twice).
- Killed together with every peer: it restores the checkpoint, codec state included, and the run
  is the run it would have been: each step's losses equal those of an uninterrupted run.
"""
from __future__ import annotations

import json
import signal

import pytest

from swarm.launcher import LocalSwarm, free_port
from swarm.scheduler import Plan

pytestmark = pytest.mark.slow

STEPS = 24
EVERY = 6
PEERS = ("p1", "p2", "p3", "p4")


def _args(steps, every):
    return ["--listen", f"127.0.0.1:{free_port()}", "--steps", str(steps), "--batch", "8", "--micro-batches", "2",
            "--checkpoint-every", str(every)]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The coordinator is SIGKILLed a few steps after its first checkpoint; the peers live on."""
    with LocalSwarm(tmp_path_factory.mktemp("resume")) as swarm:
        args = [*_args(STEPS, 10 * EVERY), "--stages", "2", "--replicas", "2"]
        swarm.start_coordinator(args)
        for name in PEERS:
            swarm.start_peer(name)
        swarm.wait_for(lambda: swarm.committed_step() >= EVERY + 2, 180, f"step {EVERY + 2}")
        swarm.kill("coordinator", signal.SIGKILL)
        swarm.wait_exit("coordinator", 30)
        before = swarm.report()
        swarm.start_coordinator([*args, "--resume"], name="coordinator2")
        code = swarm.wait_exit("coordinator2", 240)
        codes = {name: swarm.wait_exit(name, 30) for name in PEERS}
        yield {"swarm": swarm, "code": code, "codes": codes, "before": before, "report": swarm.report()}


def test_resumed_coordinator_finishes_and_peers_exit_cleanly(live):
    assert live["code"] == 0, live["swarm"].log("coordinator2")[-3000:]
    assert set(live["codes"].values()) == {0}, live["codes"]


def test_training_continues_from_the_live_peers_committed_step_without_rollback(live):
    before, report = live["before"], live["report"]
    resumed = next(p for p in report["plans"] if p["reason"]["change"] == "resumed")
    committed = resumed["start_step"] - 1
    assert committed >= before["steps"][-1]["step"] > EVERY  # not the (never taken) checkpoint: the peers' step
    assert f"the live peers at step {committed}" in resumed["reason"]["text"]
    assert {s["kind"] for s in resumed["sources"].values()} == {"keep"}
    assert resumed["version"] > max(p["version"] for p in before["plans"])
    assert not [e for e in report["events"] if e["event"] == "rollback"]
    assert [entry["step"] for entry in report["steps"]] == list(range(1, STEPS + 1))
    kept = before["steps"]
    assert [(e["step"], e["loss"]) for e in report["steps"][:len(kept)]] == [(e["step"], e["loss"]) for e in kept]


def test_replicas_agree_after_the_resume(live):
    report = live["report"]
    assert not report["mismatches"]
    late = [stage for step, per_step in report["checksums"].items() if int(step) > live["before"]["steps"][-1]["step"]
            for stage in per_step.values()]
    assert late and all(len(set(stage.values())) == 1 for stage in late)


EXACT_STEPS = 10
EXACT_EVERY = 5


def _run_exact(directory, interrupt):
    """A fixed 2 x 2 grid (--plan) for EXACT_STEPS; with `interrupt`, every process is SIGKILLed after the
    checkpoint of step EXACT_EVERY and the run resumed from it. Returns the report's losses by step."""
    plan = directory / "plan.json"
    directory.mkdir(parents=True, exist_ok=True)
    Plan("live", (("p1", "p2"), ("p3", "p4")), (2, 2)).save(plan)
    with LocalSwarm(directory) as swarm:
        args = [*_args(EXACT_STEPS, EXACT_EVERY), "--plan", str(plan)]
        swarm.start_coordinator(args)
        for name in PEERS:
            swarm.start_peer(name)
        if interrupt:
            latest = swarm.checkpoint_dir / "latest.json"
            swarm.wait_for(lambda: latest.exists() and json.loads(latest.read_text())["step"] >= EXACT_EVERY, 180,
                           f"the checkpoint of step {EXACT_EVERY}")
            for name in ("coordinator", *PEERS):
                swarm.kill(name, signal.SIGKILL)
            for name in ("coordinator", *PEERS):
                swarm.wait_exit(name, 30)
            (swarm.checkpoint_dir / "coordinator.json").unlink()  # the new peers wait for the new coordinator
            swarm.start_coordinator([*args, "--resume"], name="coordinator2")
            for name in PEERS:
                swarm.start_peer(name)
        code = swarm.wait_exit("coordinator2" if interrupt else "coordinator", 240)
        assert code == 0, swarm.log("coordinator2" if interrupt else "coordinator")[-3000:]
        report = swarm.report()
        return report, {entry["step"]: entry["losses"] for entry in report["steps"]}


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    uninterrupted = _run_exact(root / "straight", interrupt=False)
    resumed = _run_exact(root / "resumed", interrupt=True)
    return {"uninterrupted": uninterrupted, "resumed": resumed}


def test_a_run_resumed_from_a_checkpoint_matches_an_uninterrupted_run_step_for_step(exact):
    report, losses = exact["resumed"]
    _, reference = exact["uninterrupted"]
    resumed = next(p for p in report["plans"] if p["reason"]["change"] == "resumed")
    assert resumed["start_step"] == EXACT_EVERY + 1
    assert {s["kind"] for s in resumed["sources"].values()} == {"checkpoint"}
    assert sorted(losses) == list(range(1, EXACT_STEPS + 1))
    assert losses == reference  # every replica's loss, every step, equal: codec state came back too
