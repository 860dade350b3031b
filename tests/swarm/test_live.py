"""The live swarm: real processes on loopback train `tiny` end to end.

One run (a coordinator and 4 peers, 2 stages x 2 replicas, 30 steps) serves several checks: the
loss falls and equals the in-process reference step for step, the bytes on the wire match the
3/6/4-bit codecs, every step commits exactly once, replicas agree bit for bit, `swarm status
--json` keeps its contract, and garbage and stale-version frames fired at a peer's data port are
rejected and counted while it trains on.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from peers.dht import SwarmDHT
from peers.protocol import TrainingSpec
from peers.torch_threads import torch_threads
from swarm.cli.status import collect
from swarm.launcher import LocalSwarm
from swarm.local import LocalConfig, run_local
from tests.swarm.conftest import GARBAGE, STALE, fire_garbage

pytestmark = pytest.mark.slow

STEPS = 60  # long enough for a few 2 s heartbeats while it trains


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The whole scenario; yields what the checks need once the coordinator has exited 0."""
    with LocalSwarm(tmp_path_factory.mktemp("live")) as swarm:
        swarm.start_coordinator(["--steps", str(STEPS), "--batch", "4", "--micro-batches", "2", "--stages", "2",
                                 "--replicas", "2", "--checkpoint-every", "10", "--lr", "3e-3"])
        for name in ("p1", "p2", "p3", "p4"):
            swarm.start_peer(name)
        cli = subprocess.Popen([sys.executable, "-m", "swarm.cli.status", "status", "--initial-peers",
                                *swarm.initial_peers(), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        with SwarmDHT(swarm.initial_peers(), client_mode=True) as dht:
            swarm.wait_for(lambda: swarm.committed_step() >= 3, 180, "step 3")
            # The DHT has each peer's record as of its last heartbeat (2 s apart; steps are pushed, not read
            # from it), and a status read under load can miss a record or find an older one: look until the
            # control record shows step 3 and every peer's record is training with a step applied.
            status = swarm.wait_for(lambda: (view := collect(dht))["step"] >= 3 and len(view["peers"]) == 4
                                    and all(p["state"] == "training" and p["breakdown"] for p in view["peers"])
                                    and view, 60, "step 3 and every peer training in the DHT")
            victim = next(p for p in status["peers"] if p["stage"] == 1)
            fire_garbage(victim["address"])
            fired_at = swarm.committed_step()
            swarm.wait_for(lambda: swarm.committed_step() >= fired_at + 3, 120, "three steps after the garbage")
            after = _heartbeat_after(dht, victim["name"])
        code = swarm.wait_exit("coordinator", 240)
        peer_codes = {name: swarm.wait_exit(name, 30) for name in ("p1", "p2", "p3", "p4")}
        cli_out, cli_err = cli.communicate(timeout=120)
        yield {"swarm": swarm, "code": code, "peer_codes": peer_codes, "status": status, "victim": after,
               "report": swarm.report(), "cli": (cli.returncode, cli_out, cli_err)}


def _heartbeat_after(dht: SwarmDHT, name: str) -> dict:
    """`name`'s record from the DHT once it has announced again after this call (heartbeats are 2 s apart)."""
    def stamped() -> tuple[float, dict | None]:
        view = collect(dht)
        record = next((p for p in view["peers"] if p["name"] == name), None)
        return (time.time() - record["heartbeat_age_s"] if record else 0.0), record

    since, last = stamped()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        stamp, record = stamped()
        last = record or last
        if record is not None and stamp > since + 0.5:
            break
    assert last is not None, f"{name}'s record is not in the DHT"
    return last


def test_coordinator_and_peers_exit_cleanly(run):
    assert run["code"] == 0, run["swarm"].log("coordinator")[-3000:]
    assert run["peer_codes"] == dict.fromkeys(("p1", "p2", "p3", "p4"), 0)


def test_every_step_commits_once_in_order(run):
    steps = [entry["step"] for entry in run["report"]["steps"]]
    assert steps == list(range(1, STEPS + 1))


def test_loss_falls(run):
    losses = [entry["loss"] for entry in run["report"]["steps"]]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, losses


@pytest.mark.usefixtures("eager_codecs")  # the peers quantize eagerly too (LocalSwarm passes --no-fused)
def test_losses_match_the_in_process_reference(run):
    """The same grid in one process (swarm-sim local, InProcessHub) gives the same numbers: the
    network, processes and step protocol change nothing about the training itself."""
    layers = run["report"]["plans"][0]["layers"]
    config = LocalConfig(TrainingSpec(batch=4, micro_batches=2, steps=STEPS), stages=2, replicas=2, layers=layers,
                         eval_samples=8)
    with torch_threads(run["swarm"].threads):  # the peers' thread count: reductions round alike
        reference = run_local(config)
    live = [entry["loss"] for entry in run["report"]["steps"]]
    assert live == pytest.approx([entry["loss"] for entry in reference["steps"]], rel=1e-4)


def test_wire_bits_match_the_3_6_4_recipe(run):
    bits = run["report"]["bits_per_value"]
    # Codes at 3/6/4 bits plus one fp16 scale per block and the frame header.
    assert 3.0 <= bits["forward"] < 3.5
    assert 6.0 <= bits["backward"] < 6.5
    assert 4.0 <= bits["gradient"] < 4.5


def test_replicas_hold_identical_parameters(run):
    report = run["report"]
    assert not report["mismatches"]
    compared = [stage for per_step in report["checksums"].values() for stage in per_step.values() if len(stage) == 2]
    assert len(compared) >= STEPS  # both replicas of both stages seen at most steps


def test_final_checkpoint_written(run):
    latest = json.loads((run["swarm"].checkpoint_dir / "latest.json").read_text())
    assert latest["step"] == STEPS
    assert (run["swarm"].checkpoint_dir / latest["path"] / "stage-0.bin").stat().st_size > 0


def test_status_json_contract(run):
    status = run["status"]
    for key, kind in (("plan_version", int), ("step", int), ("tokens_per_s", float), ("peers", list)):
        assert isinstance(status[key], kind), key
    assert status["plan_version"] >= 1 and status["step"] >= 3 and isinstance(status["loss"], float)
    assert {p["name"] for p in status["peers"]} == {"p1", "p2", "p3", "p4"}
    for peer in status["peers"]:
        assert peer["state"] == "training" and peer["device"] == "cpu" and peer["tflops"] > 0
        assert peer["stage"] in (0, 1) and peer["replica"] in (0, 1)
        assert 0 <= peer["heartbeat_age_s"] < 15 and len(peer["param_checksum"]) == 64
        breakdown = peer["breakdown"]  # of the last step it applied
        assert set(breakdown) == {"step", "compute_s", "wait_forward_s", "wait_backward_s", "allreduce_s", "commit_s"}
        assert 1 <= breakdown["step"] == peer["step"] and breakdown["compute_s"] > 0
        # the first stage waits for no activations and the last for no gradients (the other waits may round
        # to 0 when the message was there before the stage asked for it)
        assert breakdown["wait_forward_s" if peer["stage"] == 0 else "wait_backward_s"] == 0


def test_each_peer_announces_the_speed_it_measured_on_the_model_it_trains(run):
    """Before the first plan a peer learns the model from the control record and scales its start-up matmul
    speed by the model's efficiency on the device; that figure is the TFLOPS its record announces."""
    for peer in run["status"]["peers"]:
        announced = re.search(r"(\d+\.\d+) TFLOPS on tiny's blocks", run["swarm"].log(peer["name"]))
        assert announced, run["swarm"].log(peer["name"])[-2000:]
        assert peer["tflops"] == float(announced.group(1))


def test_each_step_of_the_report_says_where_the_members_time_went(run):
    steps = run["report"]["steps"]
    for entry in steps[2:]:  # from step 3, every member has applied a step before the commit
        assert set(entry["breakdown"]) == {"p1", "p2", "p3", "p4"}, entry
        assert all(b["step"] < entry["step"] and b["commit_s"] >= 0 for b in entry["breakdown"].values())
    # 2 replicas per stage: every step all-reduces
    assert all(b["allreduce_s"] > 0 for entry in steps[2:] for b in entry["breakdown"].values())


def test_status_cli_prints_the_json_contract(run):
    code, out, err = run["cli"]
    assert code == 0, err
    status = json.loads(out)
    assert {"plan_version", "step", "loss", "tokens_per_s", "peers"} <= set(status)
    for peer in status["peers"]:
        assert {"name", "state", "stage", "replica", "device", "tflops", "heartbeat_age_s",
                "param_checksum"} <= set(peer)


def test_garbage_and_stale_frames_are_rejected_and_counted(run):
    victim = run["victim"]
    assert victim["rejected"]["malformed"] >= GARBAGE
    assert victim["dropped_stale"] >= STALE
    assert victim["state"] == "training" and not victim["error"]
    assert run["report"]["steps"][-1]["step"] == STEPS  # it kept training to the end
