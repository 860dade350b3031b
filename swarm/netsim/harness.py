"""One emulated network for a scenario, torn down whatever happens.

    with NetHarness(scenario, say=print) as net:       # root: namespaces, shaped links, cgroups
        net.processes.start("a0", net.node("a0").netns, [...], cgroup=net.cgroup("a0"))
    # here every process is reaped, every namespace, veth, bridge and cgroup is gone

`__enter__` first checks the privileges (NetsimUnavailable otherwise) and removes the leftovers of
killed runs; `close()` (also `__exit__`) is idempotent and runs on success, failure, timeout, and
Ctrl-C or SIGTERM: `interrupts_as_exceptions()` turns both into a KeyboardInterrupt, and both are
ignored while the teardown runs, so a second Ctrl-C cannot cut it short.

Latency: `netem` where the kernel has it (probed once), else `emulated`: each peer gets a
`--link-latency` file (destination data address -> one-way ms) for the delay line in its
transport (`peers.dataplane.delay_line`). Compute: each device's `tflops` relative to the fastest becomes a
CPU quota for its peer (`cgroups.py`); the fastest gets `cpu_per_device` cores (default: what the
machine's cores allow for all devices at once, at most one).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Literal

from swarm.scheduler import Scenario

from .cgroups import CpuLimits
from .cleanup import remove_leftovers
from .commands import check_privileges, netem_available
from .links import Path as LinkPath
from .links import paths as scenario_paths
from .links import uplinks_mbps
from .processes import Processes
from .topology import Node, Topology

__all__ = ["NetHarness", "Interrupted", "interrupts_as_exceptions", "cpu_quotas", "LatencyMode"]

LatencyMode = Literal["auto", "netem", "emulated"]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised as a KeyboardInterrupt so the same `finally` tears everything down."""


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Inside: SIGINT and SIGTERM raise `Interrupted` (a KeyboardInterrupt), even where the harness was
    started with SIGINT ignored (a background job of a non-interactive shell)."""
    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"signal {signum}")

    previous = {signum: signal.signal(signum, raise_interrupted) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cpu_quotas(scenario: Scenario, cores_for_fastest: float | None = None) -> dict[str, float]:
    """CPU cores per device: the fastest gets `cores_for_fastest`, others in proportion to their TFLOPS."""
    n = len(scenario.devices)
    if cores_for_fastest is None:  # leave a fifth of the machine to the coordinator, the DHT and the kernel
        cores_for_fastest = min(1.0, 0.8 * (os.cpu_count() or 1) / n)
    fastest = max(device.tflops for device in scenario.devices)
    return {device.id: cores_for_fastest * device.tflops / fastest for device in scenario.devices}


class NetHarness:
    """Namespaces, shaped links, latency files and cgroups for `scenario`, plus the processes run in them.

    rate_mbps: one rate for every path instead of the scenario's (uplinks then ignored);
    unshaped: no rate limit at all (latency stays); quotas: False runs every peer unlimited.
    """

    def __init__(self, scenario: Scenario, *, workdir: Path | None = None, rate_mbps: float | None = None,
                 unshaped: bool = False, latency: LatencyMode = "auto", cpu_per_device: float | None = None,
                 quotas: bool = True, say: Callable[[str], None] = print) -> None:
        self.scenario = scenario
        self.say = say
        self._temporary = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="swn-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.paths: list[LinkPath] = scenario_paths(scenario, rate_mbps=rate_mbps, unshaped=unshaped)
        self.uplinks = uplinks_mbps(scenario) if rate_mbps is None and not unshaped else {}
        self.requested_latency = latency
        self.latency: Literal["netem", "emulated"] = "emulated"
        self.cpu = CpuLimits()
        self.wants_quotas = quotas
        self.cores = cpu_quotas(scenario, cpu_per_device) if quotas and self.cpu.version else {}
        self.topology = Topology([device.id for device in scenario.devices])
        self.processes = Processes(self.workdir)
        self._cgroups: dict[str, Path] = {}
        self._latency_files: dict[str, Path] = {}
        self._closed = False

    # ---- set-up --------------------------------------------------------------------------------

    def __enter__(self) -> NetHarness:
        check_privileges()
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def _open(self) -> None:
        found = remove_leftovers(self.cpu)
        if found["namespaces"] or found["cgroups"]:
            self.say(f"removed leftovers of a killed run: {', '.join(found['namespaces'] + found['cgroups'])}")
        self.topology.build()
        self.latency = self._choose_latency()
        self.topology.shape(self.paths, self.uplinks, netem=self.latency == "netem")
        if self.latency == "emulated":
            for device in self.topology.devices:
                table = {self.node(p.dst).data_address: round(p.latency_ms, 3) for p in self.paths if p.src == device}
                path = self.workdir / f"latency-{self.topology.devices[device].netns}.json"
                path.write_text(json.dumps(table, indent=1))
                self._latency_files[device] = path
        if self.wants_quotas and not self.cores:
            self.say("no cpu cgroup controller here (v1 /sys/fs/cgroup/cpu or v2 cpu.max): peers run without "
                     "CPU quotas, every device at the same speed")
        for device, cores in self.cores.items():
            self._cgroups[device] = self.cpu.create(f"{self.topology.devices[device].netns}", cores)
        shaped = sum(p.shaped for p in self.paths)
        self.say(f"network up: {len(self.topology.devices)} device namespaces + coordinator ({self.topology.run}), "
                 f"{shaped} of {len(self.paths)} paths shaped, latency {self.latency}"
                 + (f", cpu quotas {self._describe_cores()}" if self.cores else ""))

    def _choose_latency(self) -> Literal["netem", "emulated"]:
        if self.requested_latency == "emulated":
            return "emulated"
        has_netem = netem_available(self.topology.bridge_ns)
        if self.requested_latency == "netem" and not has_netem:
            raise RuntimeError("--latency netem: this kernel has no netem qdisc (sch_netem); use --latency "
                               "emulated (the data plane's delay line) or load the module (modprobe sch_netem)")
        return "netem" if has_netem else "emulated"

    def _describe_cores(self) -> str:
        return ", ".join(f"{name} {cores:.2f}" for name, cores in self.cores.items())

    # ---- what the runs use ---------------------------------------------------------------------

    def node(self, device: str) -> Node:
        return self.topology.devices[device]

    def cgroup(self, device: str) -> Path | None:
        return self._cgroups.get(device)

    def latency_file(self, device: str) -> Path | None:
        return self._latency_files.get(device)

    def path(self, src: str, dst: str) -> LinkPath:
        return next(p for p in self.paths if p.src == src and p.dst == dst)

    def set_rate(self, src: str, dst: str, mbps: float) -> None:
        """Reshape the path src -> dst to `mbps` Mbit/s now; `paths` says so from then on."""
        self.topology.set_rate(src, dst, mbps)
        self.paths = [replace(p, mbps=mbps) if (p.src, p.dst) == (src, dst) else p for p in self.paths]

    # ---- teardown ------------------------------------------------------------------------------

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process, kill what is left in our namespaces, delete them and the cgroups. Idempotent."""
        if self._closed:
            return
        main = threading.current_thread() is threading.main_thread()  # only the main thread may touch signals
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        problems = []
        try:
            for step in (self.processes.stop_all, self.topology.teardown, self._remove_cgroups, self.processes.reap):
                try:
                    step()
                except Exception as error:  # keep going: each later step removes more
                    problems.append(f"{getattr(step, '__name__', step)}: {error}")
            if self._temporary:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self._closed = True
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if problems:
            raise RuntimeError("teardown left something behind (`swarm-sim net clean` retries): " + "; ".join(problems))

    def _remove_cgroups(self) -> None:
        for path in self._cgroups.values():
            self.cpu.remove(path)
