"""A one-way broken link, for real: peers in network namespaces, the link cut by a firewall rule.

Four peers train 2 stages x 2 replicas, each in its own namespace (`NetHarness`, links unshaped).
Mid-run, a DROP rule in stage 1's namespace cuts what its pipeline neighbour on stage 0 sends to
its data port, in that direction only: the DHT (heartbeats, records) and everything else keep
working, so nobody looks dead. The stage-1 peer times out first (forward waits are the shortest,
`WAIT_NESTING`) and names the silent sender; after `--evict-after 2` failed attempts at the same
grid the coordinator evicts that sender, and training goes on without it. Once the rule is gone
and its back-off (`--readmit-after`) has passed, the peer is let back into the grid.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from swarm.coordinator.report import read_report
from swarm.netsim.harness import NetHarness
from swarm.netsim.processes import python_command
from swarm.netsim.topology import DATA_PORT, DHT_PORT
from swarm.scheduler import Scenario

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and iptables need root")]

ROOT = Path(__file__).resolve().parents[2]
STEPS = 60
EVICT_AFTER = 2


def _wait(condition, timeout, what, net):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if net.processes.procs["coordinator"].poll() is not None:
            break
        time.sleep(0.2)
    logs = "\n".join(f"--- {name}\n{net.processes.log(name, 2500)}" for name in net.processes.procs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def _firewall(net, device, action, source):
    subprocess.run(["ip", "netns", "exec", net.node(device).netns, "iptables", action, "INPUT", "-p", "tcp",
                    "-s", source, "--dport", str(DATA_PORT), "-j", "DROP"], check=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("blame")
    scenario = Scenario.load(ROOT / "swarm" / "presets" / "net" / "uniform4.json")
    with NetHarness(scenario, workdir=work / "net", unshaped=True, quotas=False, say=lambda text: None) as net:
        procs, coordinator = net.processes, net.topology.coordinator
        directory = work / "coordinator"
        procs.start("coordinator", coordinator.netns, python_command(
            "swarm.cli.coordinator", "--listen", f"{coordinator.address}:{DHT_PORT}", "--steps", str(STEPS),
            "--batch", "8", "--micro-batches", "2", "--stages", "2", "--replicas", "2",
            "--checkpoint-dir", str(directory), "--checkpoint-every", "1000",
            "--evict-after", str(EVICT_AFTER), "--readmit-after", "5"))

        def initial_peers():
            try:
                addrs = json.loads((directory / "coordinator.json").read_text())["initial_peers"]
            except (OSError, ValueError, KeyError):
                return None
            return [a for a in addrs if f"/ip4/{coordinator.address}/" in a]

        initial = _wait(initial_peers, 60, "the coordinator's address", net)
        for device, node in net.topology.devices.items():
            procs.start(device, node.netns, python_command(
                "peers.cli", "join", "--initial-peers", *initial, "--name", device, "--host", node.address,
                "--port", str(DATA_PORT), "--threads", "1"))
        report = _wait(lambda: (r := read_report(directory)).get("steps") and len(r["steps"]) >= 3 and r, 180,
                       "three committed steps", net)
        plan = report["plans"][-1]
        silent, victim = plan["grid"][0][0], plan["grid"][1][0]
        source = net.node(silent).address
        _firewall(net, victim, "-I", source)
        broken = time.monotonic()
        blamed = _wait(lambda: next((p for p in read_report(directory)["plans"]
                                     if p["reason"]["lost"].get(silent) == "blamed"), None),
                       plan["timeouts"]["commit_s"] * EVICT_AFTER + 60, f"{silent} blamed", net)
        evicted_after = time.monotonic() - broken
        _firewall(net, victim, "-D", source)
        code = _wait(lambda: procs.procs["coordinator"].poll() is not None, 300, "the end of the run", net)
        yield {"silent": silent, "victim": victim, "plan": plan, "blamed": blamed, "evicted_after": evicted_after,
               "code": procs.procs["coordinator"].returncode if code else None, "report": read_report(directory),
               "log": procs.log("coordinator", 6000)}


def test_the_silent_sender_is_evicted_within_commit_s_times_k(run):
    commit_s = run["plan"]["timeouts"]["commit_s"]
    assert run["evicted_after"] <= commit_s * EVICT_AFTER, (run["evicted_after"], commit_s)
    blamed = run["blamed"]
    assert run["silent"] not in {n for row in blamed["grid"] for n in row}
    assert run["victim"] in blamed["reason"]["errors"] and run["silent"] in blamed["reason"]["errors"][run["victim"]]


def test_nobody_else_is_evicted_and_training_continues_to_the_end(run):
    assert run["code"] == 0, run["log"]
    evicted = {name for plan in run["report"]["plans"] for name, why in plan["reason"]["lost"].items()
               if why in ("blamed", "timed_out", "suspected")}
    assert evicted == {run["silent"]}
    assert [entry["step"] for entry in run["report"]["steps"]] == list(range(1, STEPS + 1))


def test_the_evicted_peer_rejoins_after_its_back_off_once_the_link_works(run):
    plans = run["report"]["plans"]
    after = plans[plans.index(run["blamed"]) + 1:]
    assert any(run["silent"] in {n for row in plan["grid"] for n in row} for plan in after), \
        [(p["version"], p["grid"], p["reason"]["text"]) for p in after]
