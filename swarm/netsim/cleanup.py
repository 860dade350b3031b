"""Leftovers of a killed harness run: found by the `swn-` prefix, removed only when their run is dead.

A run names everything `swn-PIDxN-...` after the PID of the harness that made it. A SIGKILLed
harness cannot clean up, so every harness start (and `swarm-sim net clean`) looks for names of
ours whose PID is no longer alive, kills the processes inside those namespaces and cgroups, and
deletes them; a concurrently running harness's namespaces are left alone.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from .cgroups import CpuLimits
from .commands import PREFIX, netns_list
from .topology import owner_pid, remove_namespace

__all__ = ["remove_leftovers", "find_leftovers"]


def _dead(name: str) -> bool:
    pid = owner_pid(name)
    if pid is None:
        return name.startswith(PREFIX)  # ours by prefix but no run id: nobody owns it
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def find_leftovers(cpu: CpuLimits | None = None) -> dict[str, list[str]]:
    """{"namespaces": [...], "cgroups": [...]} of dead runs (nothing is removed)."""
    cpu = cpu or CpuLimits()
    return {"namespaces": [n for n in netns_list() if n.startswith(PREFIX) and _dead(n)],
            "cgroups": [str(p) for p in cpu.leftovers() if _dead(p.name)]}


def remove_leftovers(cpu: CpuLimits | None = None) -> dict[str, list[str]]:
    """Remove what `find_leftovers` finds (processes inside first); returns what was removed."""
    cpu = cpu or CpuLimits()
    found = find_leftovers(cpu)
    for path in found["cgroups"]:  # kill the cgroups' processes first: they may hold namespaces
        for pid in CpuLimits.pids(Path(path)):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for netns in found["namespaces"]:
        remove_namespace(netns)
    for path in found["cgroups"]:
        cpu.remove(Path(path))
    return found
