"""Run a whole swarm on this machine as real processes: the demo, the benchmark and the live tests.

Every daemon is a separate OS process started exactly as a user would (`python -m
swarm.cli.coordinator`, `python -m peers.cli join`), in its own process group, logging to
`DIR/NAME.log`. Failures are scripted, not hoped for: `kill("p2", SIGKILL)` at a step read from
the coordinator's report. `close()` stops everything it started (SIGTERM, then SIGKILL of the
whole group, DHT processes and `p2pd` included) and reaps it, also when a test fails midway.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LocalSwarm", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for a coordinator that must restart on it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalSwarm:
    """A coordinator and peers on loopback, under `directory`.

    Example:
        with LocalSwarm(tmp) as swarm:
            swarm.start_coordinator(["--steps", "30", "--stages", "2", "--replicas", "2"])
            for name in ("p1", "p2", "p3", "p4"):
                swarm.start_peer(name)
            swarm.wait_for(lambda: swarm.committed_step() >= 10, 120, "step 10")
            swarm.kill("p2", signal.SIGKILL)
    """

    def __init__(self, directory: Path, *, threads: int = 1, fused: bool = False) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.dir / "checkpoints"
        self.threads = threads
        self.fused = fused
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []

    def start_coordinator(self, args: list[str], name: str = "coordinator") -> subprocess.Popen[bytes]:
        """Start `swarm-coordinator ARGS --checkpoint-dir DIR/checkpoints`."""
        return self._spawn(name, ["-m", "swarm.cli.coordinator", *args, "--checkpoint-dir", str(self.checkpoint_dir)])

    def initial_peers(self, timeout: float = 60.0) -> list[str]:
        """The coordinator's multiaddrs, from the `coordinator.json` it writes at start."""
        path = self.checkpoint_dir / "coordinator.json"
        self.wait_for(path.exists, timeout, "the coordinator to write coordinator.json")
        return list(json.loads(path.read_text())["initial_peers"])

    def dashboard_url(self, timeout: float = 60.0) -> str:
        """The dashboard's URL of a coordinator started with `--http`, from its `coordinator.json`."""
        path = self.checkpoint_dir / "coordinator.json"

        def url() -> str | None:
            try:
                return str(json.loads(path.read_text()).get("dashboard") or "") or None
            except (OSError, ValueError):
                return None

        return str(self.wait_for(url, timeout, "the coordinator to write its dashboard URL to coordinator.json"))

    def start_peer(self, name: str, args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start `swarm-peer join` named `name`, pointed at the coordinator."""
        command = ["-m", "peers.cli", "join", "--initial-peers", *self.initial_peers(), "--name", name,
                   "--threads", str(self.threads), *args]
        if not self.fused:
            command.append("--no-fused")
        return self._spawn(name, command)

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Send `signum` to the daemon `name` only (its own children react as they would in real life)."""
        process = self.processes[name]
        if process.poll() is None:
            os.kill(process.pid, signum)

    def wait_exit(self, name: str, timeout: float) -> int:
        return self.processes[name].wait(timeout)

    def report(self) -> dict[str, Any]:
        """The coordinator's report, folded from its `report.jsonl` (empty until the coordinator starts)."""
        from swarm.coordinator.report import read_report  # the coordinator package imports torch: only when read

        try:
            return read_report(self.checkpoint_dir)
        except (OSError, ValueError):
            return {}

    def committed_step(self) -> int:
        steps = self.report().get("steps") or [{"step": 0}]
        return int(steps[-1]["step"])

    def log(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.2) -> Any:
        """Poll `condition` until truthy; TimeoutError naming `what` and the recent logs otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            dead = [n for n, p in self.processes.items() if p.poll() not in (None, 0, -signal.SIGKILL)]
            if dead and "coordinator" in dead:
                break
            time.sleep(poll)
        tails = "\n".join(f"--- {n}.log\n{self.log(n)[-1500:]}" for n in self.processes)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}\n{tails}")

    def close(self, grace: float = 10.0) -> None:
        """SIGTERM every daemon, then SIGKILL each whole process group, and reap them all."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the group: its DHT process and p2pd too
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def __enter__(self) -> "LocalSwarm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        if name in self.processes and self.processes[name].poll() is None:
            raise ValueError(f"a daemon named {name!r} is already running")
        log = open(self.dir / f"{name}.log", "a")
        self._logs.append(log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.threads),
               "XDG_CACHE_HOME": str(self.dir / "cache")}  # fetched corpora stay under the swarm's directory
        process = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        self.processes[name] = process
        return process
