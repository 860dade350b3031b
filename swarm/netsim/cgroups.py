"""CPU quotas: a device with half the TFLOPS of the fastest computes at half its speed.

Each peer process starts inside its own cgroup (`swn-RUN-dN`) with a CFS bandwidth limit:
cgroup v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us` where the v1 `cpu` controller is mounted
(/sys/fs/cgroup/cpu), else cgroup v2's `cpu.max` ("QUOTA PERIOD") in the unified hierarchy. The
process is put into the cgroup before it execs (a shell writes its own PID to `cgroup.procs`,
then execs the peer), so every thread and child it ever has is limited and counted too.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .commands import PREFIX

__all__ = ["CpuLimits", "PERIOD_US"]

PERIOD_US = 100_000
_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")


class CpuLimits:
    """Creates, lists and removes the harness's cpu cgroups; `version` is 1, 2 or None (unsupported)."""

    def __init__(self, v1_root: Path = _V1, v2_root: Path = _V2) -> None:
        self.version: int | None = None
        self.root = v1_root
        if (v1_root / "cpu.cfs_quota_us").exists():
            self.version = 1
        elif "cpu" in _read(v2_root / "cgroup.controllers").split():
            self.version, self.root = 2, v2_root

    def create(self, name: str, cores: float | None) -> Path:
        """A cgroup `name` (it must start with the harness prefix) limited to `cores` CPUs (None: unlimited)."""
        if not name.startswith(PREFIX):
            raise ValueError(f"cgroup {name!r} must start with {PREFIX!r}")
        if self.version is None:
            raise RuntimeError("no cpu cgroup controller here (neither v1 /sys/fs/cgroup/cpu nor v2 cpu.max)")
        path = self.root / name
        if self.version == 2:
            _enable_cpu_controller(self.root)
        path.mkdir(exist_ok=True)
        quota = -1 if cores is None else max(1000, round(cores * PERIOD_US))
        try:
            if self.version == 1:
                (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (path / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {PERIOD_US}")
        except OSError:
            path.rmdir()
            raise
        return path

    def leftovers(self) -> list[Path]:
        """Every cgroup of ours under the controller (live runs' too: filter by `owner_pid`)."""
        if self.version is None or not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.name.startswith(PREFIX) and p.is_dir())

    @staticmethod
    def pids(path: Path) -> list[int]:
        return [int(word) for word in _read(path / "cgroup.procs").split() if word.isdigit()]

    def remove(self, path: Path, timeout: float = 10.0) -> None:
        """SIGKILL what is left inside `path`, then remove it (retrying while the kernel lets the tasks go)."""
        deadline = time.monotonic() + timeout
        while path.exists():
            for pid in self.pids(path):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot remove cgroup {path}: {error}; kill the processes in "
                                       f"{path / 'cgroup.procs'} and rmdir it") from None
                time.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _enable_cpu_controller(root: Path) -> None:
    control = root / "cgroup.subtree_control"
    if "cpu" not in _read(control).split():
        control.write_text("+cpu")
