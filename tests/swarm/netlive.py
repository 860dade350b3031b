"""A live swarm inside `NetHarness` namespaces, for tests that need a real network between peers.

`NetSwarm` starts the coordinator in its namespace and `swarm-peer join` per device in the
device's namespace (as `swarm-sim net run` does), and waits on the coordinator's report log with
every log tail in the failure message.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from swarm.coordinator.report import read_report
from swarm.netsim.harness import NetHarness
from swarm.netsim.processes import python_command
from swarm.netsim.topology import DATA_PORT, DHT_PORT
from tests.system import ensure_command

# every test here builds namespaces (and some firewall rules or cgroups): root only, as in CI
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces, iptables and cgroups need root")


def tiny_scenario(name: str, devices: list[dict[str, Any]], sites: dict[str, Any], stages: int, replicas: int,
                  links: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A scenario file's contents for the `tiny` model (what the harness shapes links and cgroups from)."""
    return {"name": name, "devices": devices, "sites": sites, "links": list(links),
            "model": {"layers": 4, "d_model": 128, "heads": 4, "seq_len": 128, "vocab": 256},
            "batch": {"global_sequences": 8, "micro_sequences": 2},
            "parallelism": {"stages": stages, "replicas": replicas}}


class NetSwarm:
    """The coordinator (with `coordinator_args`) and peers of one run over `net`."""

    def __init__(self, net: NetHarness, directory: Path, coordinator_args: Sequence[str]) -> None:
        self.net = net
        self.dir = directory
        self.procs = net.processes
        node = net.topology.coordinator
        self.procs.start("coordinator", node.netns, python_command(
            "swarm.cli.coordinator", "--listen", f"{node.address}:{DHT_PORT}", "--checkpoint-dir", str(directory),
            *coordinator_args))
        self.initial = self.wait(self._initial_peers, 60, "the coordinator's address")

    def _initial_peers(self) -> list[str] | None:
        try:
            addrs = json.loads((self.dir / "coordinator.json").read_text())["initial_peers"]
        except (OSError, ValueError, KeyError):
            return None
        return [a for a in addrs if f"/ip4/{self.net.topology.coordinator.address}/" in a] or None

    def start_peer(self, device: str, extra: Sequence[str] = ()) -> None:
        """`swarm-peer join` as `device`, in its namespace and cgroup, with `extra` flags."""
        node = self.net.node(device)
        self.procs.start(device, node.netns, python_command(
            "peers.cli", "join", "--initial-peers", *self.initial, "--name", device, "--host", node.address,
            "--port", str(DATA_PORT), "--threads", "1", "--no-fused", "--cache-dir", str(self.dir.parent / "cache"),
            *extra), cgroup=self.net.cgroup(device))

    def report(self) -> dict[str, Any]:
        try:
            return read_report(self.dir)
        except OSError:
            return {}

    def plan_where(self, condition: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The first plan in the report that satisfies `condition`."""
        return self.wait(lambda: next((p for p in self.report().get("plans", []) if condition(p)), None), timeout,
                         what)

    def firewall(self, device: str, action: str, source: str) -> None:
        """`iptables ACTION` (-I or -D) a DROP of TCP from `source` to `device`'s data port, in its namespace."""
        iptables, missing = ensure_command("iptables", "iptables")
        if iptables is None:
            pytest.fail(f"cutting a link needs iptables: {missing}")
        subprocess.run(["ip", "netns", "exec", self.net.node(device).netns, iptables, action, "INPUT", "-p", "tcp",
                        "-s", source, "--dport", str(DATA_PORT), "-j", "DROP"], check=True)

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.procs.procs["coordinator"].poll() is not None:
                break
            time.sleep(0.2)
        logs = "\n".join(f"--- {name}\n{self.procs.log(name, 2500)}" for name in self.procs.procs)
        raise AssertionError(f"timed out waiting for {what}\n{logs}")

    def finish(self, timeout: float) -> int | None:
        """The coordinator's exit code once the run ends (None if it does not within `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.procs.procs["coordinator"].poll()
            if code is not None:
                return code
            time.sleep(0.2)
        return None

    def log(self, name: str = "coordinator", tail: int = 6000) -> str:
        return self.procs.log(name, tail)
