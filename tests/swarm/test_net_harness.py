"""`swarm-sim net` for real: namespaces, shaped veths, cgroups, the coordinator and peers as processes.

Each test runs the CLI as a user would (a subprocess, as root) and then checks that nothing is
left: no namespace, interface or cgroup of the run, no process of it (by its work directory in the
command line, or living in a network namespace that did not exist before).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm.coordinator.report import read_report
from swarm.netsim.harness import Interrupted, interrupts_as_exceptions

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="swarm-sim net needs root (network namespaces, tc, "
                                                           "cgroups)")]

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "swarm" / "presets" / "net"
CGROUPS = Path("/sys/fs/cgroup/cpu")


def _sim(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "swarm.cli.sim", "net", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _netns_inodes() -> set[str]:
    inodes = set()
    for entry in Path("/proc").iterdir():
        try:
            inodes.add(os.readlink(entry / "ns" / "net"))
        except OSError:
            continue
    return inodes


def _namespaces() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split("\n")


class _Before:
    """What the machine looked like before a run, to compare with after it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = str(workdir)
        self.namespaces = _namespaces()
        self.inodes = _netns_inodes()

    def leftovers(self) -> dict[str, list[str]]:
        processes = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                netns = os.readlink(entry / "ns" / "net")
            except OSError:
                continue
            if self.workdir in cmdline or netns not in self.inodes:
                processes.append(f"{entry.name}: {cmdline[:200]}")
        cgroups = sorted(p.name for p in CGROUPS.glob("swn-*")) if CGROUPS.is_dir() else []
        return {"processes": processes, "cgroups": cgroups,
                "namespaces": sorted(set(_namespaces()) ^ set(self.namespaces))}

    def assert_clean(self) -> None:
        deadline = time.monotonic() + 10  # the kernel finishes reaping killed processes
        while any(self.leftovers().values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.leftovers() == {"processes": [], "cgroups": [], "namespaces": []}


def test_net_check_measures_every_path_as_configured(tmp_path):
    """10, 50 and 100 Mbit/s paths within 10% of their rate; the delay line within 2 ms of the latency."""
    before = _Before(tmp_path)
    process = _sim("check", str(PRESETS / "check4.json"), "--json", "--workdir", str(tmp_path))
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    paths = json.loads(out)
    assert len(paths) == 12
    assert {p["configured_mbps"] for p in paths} == {10.0, 50.0, 100.0}
    for path in paths:
        assert abs(path["measured_mbps"] / path["configured_mbps"] - 1) <= 0.10, path
        assert abs(path["latency_ms"]["measured"] - path["latency_ms"]["configured"]) <= 2.0, path
    before.assert_clean()


def test_net_run_trains_tiny_end_to_end_and_leaves_nothing(tmp_path):
    """2 stages x 2 replicas at 50 Mbit/s: the loss falls, every step commits, the report keeps its contract."""
    before = _Before(tmp_path)
    steps = 10
    report_path = tmp_path / "report.json"
    process = _sim("run", str(PRESETS / "uniform4.json"), "--steps", str(steps), "--batch", "8", "--micro-batches", "2",
                   "--fwd", "q3", "--bwd", "q6", "--grad", "q4", "--report", str(report_path),
                   "--workdir", str(tmp_path / "work"), "--timeout", "400")
    out, err = process.communicate(timeout=480)
    assert process.returncode == 0, err[-4000:]
    report = json.loads(report_path.read_text())
    assert json.loads(out) == report
    assert report["scenario"] == "net-uniform4"
    assert report["plan"]["stages"] == 2 and report["plan"]["replicas"] == 2
    assert sorted(n for row in report["plan"]["grid"] for n in row) == ["p0", "p1", "p2", "p3"]
    assert sum(report["plan"]["layers"]) == 4
    assert report["codecs"] == {"forward": "q3", "backward": "q6", "gradient": "q4"}
    assert report["latency"] in ("emulated", "netem")
    assert [s["step"] for s in report["steps"]] == list(range(1, steps + 1))
    assert report["all_steps_committed"] and report["loss_fell"]
    losses = [s["loss"] for s in report["steps"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert report["tokens_per_s"] > 0
    assert report["iteration_s"]["measured"] > 0 and report["iteration_s"]["predicted"] > 0
    assert len(report["links"]) == 12 and all(link["configured_mbps"] == 50.0 for link in report["links"])
    assert sum(link["bytes"] for link in report["links"]) > 0
    grid = report["plan"]["grid"]
    for r in range(2):  # each pipeline's boundary carried activations and gradients both ways
        down = next(link for link in report["links"] if link["from"] == grid[0][r] and link["to"] == grid[1][r])
        assert down["bytes"] > 0
    # the peers time their links from the training traffic too (`peers.dataplane.meter`): a link announced
    # from it is one its traffic found slower than probed, and none of these healthy ones reads slow
    traffic = {(name, peer): link["bandwidth_gbps"] for name, peer_report in report["peers"].items()
               for peer, link in (peer_report["links"] or {}).items() if link.get("from_traffic")}
    assert all(rate >= 0.035 for rate in traffic.values()), traffic
    assert set(report["peers"]) == {"p0", "p1", "p2", "p3"}
    assert all(peer["bytes_sent"]["gradient"] > 0 for peer in report["peers"].values())
    assert report["exit_codes"] == {"coordinator": 0, "p0": 0, "p1": 0, "p2": 0, "p3": 0, **(
        {"observer": report["exit_codes"]["observer"]} if "observer" in report["exit_codes"] else {})}
    before.assert_clean()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_both_stop_signals_become_the_one_interrupt_the_teardown_handles(signum):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted), interrupts_as_exceptions():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises here, at once
    assert signal.getsignal(signum) is before  # and the caller's handler is back


def test_a_signal_mid_run_leaves_nothing_behind(tmp_path, signum=signal.SIGINT):
    """Ctrl-C in the middle of a run (SIGTERM takes the same path: the test above)."""
    before = _Before(tmp_path)
    work = tmp_path / "work"
    process = _sim("run", str(PRESETS / "uniform4.json"), "--steps", "200", "--workdir", str(work))
    report = work / "coordinator"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if read_report(report).get("steps"):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert before.leftovers()["namespaces"], "the run should be up: its namespaces exist"
    process.send_signal(signum)
    _out, err = process.communicate(timeout=90)
    assert process.returncode == 130, err[-3000:]
    assert "torn down" in err
    before.assert_clean()


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    """A SIGKILLed harness cannot clean up; the next start (or `net clean`) removes what it left, by prefix."""
    dead = 4_000_000  # above any PID in use here (pid_max is 4194304 at most): nobody owns this run
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
    netns, cgroup = f"swn-{dead}x0-d0", CGROUPS / f"swn-{dead}x0-d0"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    cgroup.mkdir()
    sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "600"])
    try:
        process = _sim("clean")
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        removed = json.loads(out)
        assert netns in removed["namespaces"] and str(cgroup) in removed["cgroups"]
        assert sleeper.wait(10) == -signal.SIGKILL
        assert netns not in _namespaces() and not cgroup.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        if cgroup.exists():
            cgroup.rmdir()


def test_without_root_it_says_so_and_exits_2(tmp_path):
    """Run as `nobody`: the privilege check refuses before touching anything."""
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "swarm.cli.sim",
               "net", "check", str(PRESETS / "check4.json")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "needs root" in done.stderr
