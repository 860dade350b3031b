"""Real processes inside the emulated network: started in a namespace (and a cgroup), always reaped.

    procs = Processes(workdir)
    procs.start("a0", node.netns, [python, "-m", "peers.cli", "join", ...], cgroup=path)
    procs.stop_all()            # SIGTERM, a grace period, SIGKILL of each process group; all reaped

A command runs as `ip netns exec NS ARGS` (which execs ARGS: the PID is the daemon's own), each in
its own session so a Ctrl-C on the harness's terminal reaches only the harness, which then stops
everything in order. With a cgroup it is wrapped in `sh -c 'echo $$ > cgroup.procs; exec ...'`, so
it is limited from its first instruction. Logs go to WORKDIR/NAME.log.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["Processes", "python_command"]


def python_command(module: str, *args: str) -> list[str]:
    """`python -m module args` with this interpreter (the harness's virtualenv)."""
    return [sys.executable, "-m", module, *args]


class Processes:
    """The daemons of one run, by name."""

    def __init__(self, workdir: Path, threads: int = 1) -> None:
        self.dir = workdir
        self.threads = threads
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, netns: str, args: Sequence[str], *, cgroup: Path | None = None,
              pipe: bool = False) -> subprocess.Popen[Any]:
        """Start `args` inside `netns` (and `cgroup`); `pipe`: stdin/stdout are pipes (stderr goes to the log)."""
        if name in self.procs and self.procs[name].poll() is None:
            raise ValueError(f"a process named {name!r} is already running")
        command = ["ip", "netns", "exec", netns, *args]
        if cgroup is not None:
            command = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"), *command]
        log = open(self.dir / f"{name}.log", "ab")
        self._logs.append(log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads)}
        cwd = Path(__file__).resolve().parents[2]  # the repository root: `python -m` finds our packages
        process = subprocess.Popen(command, stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
                                   stdout=subprocess.PIPE if pipe else log, stderr=log, env=env, cwd=cwd,
                                   start_new_session=True, text=pipe)
        self.procs[name] = process
        return process

    def log(self, name: str, tail: int = 2000) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def dead(self) -> dict[str, int]:
        """Processes that have exited, with their exit codes."""
        return {name: code for name, process in self.procs.items() if (code := process.poll()) is not None}

    def stop(self, names: Sequence[str], grace: float = 8.0) -> None:
        """SIGTERM `names`, wait up to `grace` s, then SIGKILL their process groups; reap them."""
        chosen = [self.procs[n] for n in names if n in self.procs]
        for process in chosen:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the daemon only: it stops its own helpers first
        deadline = time.monotonic() + grace
        for process in chosen:
            try:
                process.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in chosen:
            _signal_group(process, signal.SIGKILL)  # the group: a DHT's p2pd and other helpers too
            try:
                process.wait(10.0)
            except subprocess.TimeoutExpired:  # stuck in the kernel; the namespace kill reaps it later
                pass

    def stop_all(self, grace: float = 8.0) -> None:
        self.stop(list(self.procs), grace)
        for process in self.procs.values():
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        for log in self._logs:
            log.close()
        self._logs.clear()

    def reap(self) -> None:
        """Wait for every started process (after the namespaces' processes were killed)."""
        for process in self.procs.values():
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                pass


def _signal_group(process: subprocess.Popen[Any], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
