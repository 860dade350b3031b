"""The harness's one way to touch the kernel: iproute2's `ip` and `tc`, run as subprocesses.

Why the iproute2 commands and not pyroute2: they ship with every Linux that has network
namespaces, need no new dependency, and each step the harness takes is a command a person can
read in the log and replay by hand (`ip -n NS ...`, `tc -n NS ...`), failing with iproute2's own
message. Many steps go through one `-batch` process per namespace, so building a topology costs a
handful of processes, not hundreds. The only output parsed is `tc -s class show` (byte counters)
and `ip netns list` / `ip netns pids`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

__all__ = ["PREFIX", "NetsimUnavailable", "CommandError", "check_privileges", "run", "batch", "netns_list",
           "netns_pids", "netem_available"]

# Every namespace, interface and cgroup the harness creates starts with this, so leftovers can be found.
PREFIX = "swn-"
_TIMEOUT_S = 60.0


class NetsimUnavailable(RuntimeError):
    """This machine or user cannot run the harness (not root, no `ip`/`tc`); the message says what to do."""


class CommandError(RuntimeError):
    """An `ip`/`tc` command failed; the message holds the command and its stderr."""


def check_privileges() -> None:
    """Raise NetsimUnavailable unless the harness can create namespaces and queueing disciplines here."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetsimUnavailable(f"swarm-sim net needs iproute2's {' and '.join(missing)} on PATH; install iproute2 "
                                "(e.g. apt-get install iproute2)")
    if os.geteuid() != 0:
        raise NetsimUnavailable("swarm-sim net needs root: it creates network namespaces, veth links, tc queueing "
                                "disciplines and cgroups. Run it with sudo (or as root in a VM or container "
                                "with CAP_NET_ADMIN and CAP_SYS_ADMIN)")


def run(args: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run one command; its stdout. CommandError (command and stderr) when it fails and `check`."""
    try:
        done = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CommandError(f"`{' '.join(args)}` did not finish within {_TIMEOUT_S:.0f} s") from None
    if check and done.returncode != 0:
        raise CommandError(f"`{' '.join(args)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def batch(tool: str, netns: str | None, lines: Sequence[str]) -> None:
    """Run `lines` through one `ip -batch` / `tc -batch` process, inside `netns` when given."""
    if not lines:
        return
    args = [tool, *(["-n", netns] if netns else []), "-batch", "-"]
    try:
        run(args, stdin="\n".join(lines) + "\n")
    except CommandError as error:
        shown = "\n    ".join(lines[:40]) + ("\n    ..." if len(lines) > 40 else "")
        raise CommandError(f"{error}\n  the batch was:\n    {shown}") from None


def netns_list() -> list[str]:
    """Names of the named network namespaces (`ip netns list`)."""
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    """Processes inside `netns` (`ip netns pids`); empty when it is gone."""
    out = run(["ip", "netns", "pids", netns], check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def netem_available(netns: str) -> bool:
    """Whether this kernel has `netem` (probed once on the loopback of a namespace of ours)."""
    try:
        run(["tc", "-n", netns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
    except CommandError:
        return False
    run(["tc", "-n", netns, "qdisc", "del", "dev", "lo", "root"], check=False)
    return True
