"""Robust aggregation in the live swarm: one of three replicas sends 1000x gradients every step.

Real processes on loopback, `tiny`, 1 stage x 3 replicas, 50 steps, the same seed and data in every
run. Every peer gets `--attack scale:1000@1`, so whichever peer holds replica 1 attacks (the others
ignore it). With `--aggregate centered-clip` the loss stays within 10% of the honest run (trained in
one process, which test_live shows to train exactly as the live swarm does) and the attacker is
named; under `mean`, `--evict-suspects` takes the attacker out of the grid. That `mean` alone does
not hold the loss is shown on the same engine in one process (test_local_robust).
"""
from __future__ import annotations

import pytest

from peers.protocol import TrainingSpec
from swarm.launcher import LocalSwarm
from swarm.local import LocalConfig, run_local

pytestmark = pytest.mark.slow

STEPS = 50
TAIL = 10  # the loss of a run: the mean over its last TAIL steps (one step's batch is noisy)
PEERS = ("p1", "p2", "p3")


def _run(root, aggregate: str, attack: str | None, extra: tuple[str, ...] = ()) -> dict:
    with LocalSwarm(root) as swarm:
        swarm.start_coordinator(["--steps", str(STEPS), "--stages", "1", "--replicas", "3", "--batch", "6",
                                 "--micro-batches", "2", "--aggregate", aggregate, *extra])
        for name in PEERS:
            swarm.start_peer(name, ["--attack", attack] if attack else [])
        code = swarm.wait_exit("coordinator", 300)
        report = swarm.report()
        assert code == 0, swarm.log("coordinator")[-3000:]
        assert {name: swarm.wait_exit(name, 60) for name in PEERS} == dict.fromkeys(PEERS, 0)
        tail = [entry["loss"] for entry in report["steps"][-TAIL:]]
        attacker = next(name for name in PEERS if report["plans"][0]["grid"][0][1] == name)
        return {"loss": sum(tail) / len(tail), "report": report, "log": swarm.log("coordinator"),
                "attacker": attacker}


def _honest() -> dict:
    """The run with no attacker, in one process: the live swarm trains exactly what `swarm-sim local`
    does (test_live checks it loss for loss), so the baseline needs no processes of its own."""
    config = LocalConfig(TrainingSpec(batch=6, micro_batches=2, steps=STEPS), stages=1, replicas=3)
    tail = [entry["loss"] for entry in run_local(config)["steps"][-TAIL:]]
    return {"loss": sum(tail) / len(tail)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    return {
        "honest": _honest(),
        "centered-clip": _run(root / "clip", "centered-clip", "scale:1000@1"),
        "evict": _run(root / "evict", "mean", "scale:1000@1", ("--evict-suspects", "3")),
    }


def test_centered_clip_keeps_the_loss_of_the_honest_run(runs):
    honest, attacked = runs["honest"]["loss"], runs["centered-clip"]["loss"]
    assert abs(attacked - honest) <= 0.10 * honest, (honest, attacked)


def test_the_attacker_is_named_and_can_be_evicted(runs):
    run = runs["centered-clip"]
    assert f"{run['attacker']}'s gradients were flagged" in run["log"]
    events = [e for e in run["report"]["events"] if e["event"] == "suspect"]
    assert {e["peer"] for e in events} == {run["attacker"]}
    evicted = runs["evict"]
    assert f"{evicted['attacker']}'s gradients were flagged by most of its stage's replicas" in evicted["log"]
    last = evicted["report"]["plans"][-1]
    assert evicted["attacker"] not in {name for row in last["grid"] for name in row}
    assert last["reason"]["lost"] == {evicted["attacker"]: "suspected"}
