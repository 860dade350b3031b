"""`swarm-sim net run`: the coordinator and one `swarm-peer join` per device, trained over the emulated network.

Everything runs as a user would run it, each daemon in its own namespace: `swarm-coordinator
--listen 10.213.0.1:31337 ...` (with `--plan PLAN.json` when given), then per device `swarm-peer
join --name DEVICE --host ITS-ADDRESS --port 40000 --link-latency FILE` inside its cgroup, plus an
observer (`swarm.netsim.observer`) in the coordinator's namespace that keeps every peer's latest
record. The harness waits for the coordinator to finish (exit 0 after the last step), reading the
tc byte counters when the first plan appears (so the peers' join-time link probes do not count)
and at the end; then `report.build_report` turns the coordinator's report, the records and the
counters into the `net run` report.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers.protocol import Codecs, TrainingSpec
from swarm.coordinator.report import read_report
from swarm.flags import as_flags, check_codecs, training_from_args
from swarm.scheduler import Scenario
from swarm.scheduler.job import Compression

from .harness import NetHarness
from .processes import python_command
from .report import build_report
from .topology import DATA_PORT, DHT_PORT

__all__ = ["RunOptions", "options_from_args", "run_swarm"]

_POLL_S = 0.25


@dataclass(frozen=True)
class RunOptions:
    """What `net run` trains: the coordinator's flags plus the harness's own."""

    training: TrainingSpec
    codecs: Codecs
    plan: Path | None = None
    skip_steps: int = 1
    timeout: float = 900.0
    fused: bool = False


def options_from_args(args: argparse.Namespace, scenario: Scenario) -> RunOptions:
    """Checked options from `net run`'s flags; codecs not given come from the scenario's `compression`."""
    training = training_from_args(args)
    # codecs a scenario names are its defaults; a scenario without a `compression` section leaves q3/q6/q4
    given = scenario.compression.codecs if scenario.compression != Compression() else {}
    codecs = check_codecs(Codecs(forward=args.fwd or given.get("forward", Codecs().forward),
                                 backward=args.bwd or given.get("backward", Codecs().backward),
                                 gradient=args.grad or given.get("gradient", Codecs().gradient),
                                 forward_delta=args.fwd_delta))
    if args.plan is not None:
        _check_plan_names(Path(args.plan), scenario)
    if args.timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout}")
    skip = args.skip_steps if args.skip_steps is not None else max(1, training.steps // 5)
    if not 0 <= skip < training.steps:
        raise ValueError(f"--skip-steps must be in 0..{training.steps - 1} (fewer than --steps), got {skip}")
    return RunOptions(training, codecs, Path(args.plan).resolve() if args.plan else None, skip, args.timeout,
                      args.fused)


def _check_plan_names(path: Path, scenario: Scenario) -> None:
    """The peers are named after the scenario's devices: a plan naming anyone else would wait forever."""
    from swarm.scheduler import Plan

    try:
        names = Plan.load(path).devices
    except ValueError as error:
        raise ValueError(f"--plan: {error}") from None
    unknown = sorted(set(names) - {device.id for device in scenario.devices})
    if unknown:
        raise ValueError(f"--plan {path}: {', '.join(unknown)} not among the scenario's devices; the peers are "
                         "named after the device ids")


def run_swarm(net: NetHarness, options: RunOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train over `net` and return the report; RuntimeError/TimeoutError (with log tails) when the run fails."""
    procs = net.processes
    coordinator = net.topology.coordinator
    directory = net.workdir / "coordinator"
    shutil.rmtree(directory, ignore_errors=True)  # a reused --workdir: no old address or report may be read
    records = net.workdir / "peers.json"
    records.unlink(missing_ok=True)
    grid = _grid_args(net.scenario, options)
    started = time.monotonic()
    deadline = started + options.timeout
    procs.start("coordinator", coordinator.netns, python_command(
        "swarm.cli.coordinator", "--listen", f"{coordinator.address}:{DHT_PORT}",
        *as_flags(options.training, options.codecs), *grid,
        "--checkpoint-dir", str(directory), "--checkpoint-every", str(10 ** 6)))
    initial = _initial_peers(net, directory / "coordinator.json", coordinator.address, min(deadline, started + 120))
    procs.start("observer", coordinator.netns, python_command(
        "swarm.netsim.observer", "--initial-peers", *initial, "--host", coordinator.address, "--out", str(records)))
    for device, node in net.topology.devices.items():
        latency = net.latency_file(device)
        procs.start(device, node.netns, python_command(
            "peers.cli", "join", "--initial-peers", *initial, "--name", device, "--host", node.address,
            "--port", str(DATA_PORT), "--threads", "1", *([] if options.fused else ["--no-fused"]),
            *(["--link-latency", str(latency)] if latency else [])), cgroup=net.cgroup(device))
    say(f"coordinator and {len(net.topology.devices)} peers started; training {options.training.steps} steps")
    start_counters = _wait(net, directory, deadline, say, options.training.steps)
    end_counters = net.topology.counters()
    peers_done = time.monotonic() + 30
    while time.monotonic() < peers_done and any(procs.procs[d].poll() is None for d in net.topology.devices):
        time.sleep(_POLL_S)
    time.sleep(1.0)  # the observer's last read of the leaving peers' final records
    coordinator_report = read_report(directory)
    peer_records = json.loads(records.read_text()) if records.exists() else {}
    return build_report(net, options, coordinator_report, peer_records, start_counters, end_counters,
                        wall_s=time.monotonic() - started, exit_codes=procs.dead())


def _grid_args(scenario: Scenario, options: RunOptions) -> list[str]:
    if options.plan is not None:
        return ["--plan", str(options.plan)]
    if scenario.parallelism is not None:
        return ["--stages", str(scenario.parallelism.stages), "--replicas", str(scenario.parallelism.replicas)]
    return ["--min-peers", str(len(scenario.devices))]


def _initial_peers(net: NetHarness, path: Path, host: str, deadline: float) -> list[str]:
    """The coordinator's multiaddrs on its namespace's address, from the coordinator.json it writes at start."""
    while time.monotonic() < deadline:
        _check_alive(net, "coordinator")
        try:
            addrs = [a for a in json.loads(path.read_text())["initial_peers"] if f"/ip4/{host}/" in a]
        except (OSError, ValueError, KeyError):
            addrs = []
        if addrs:
            return addrs
        time.sleep(_POLL_S)
    raise TimeoutError(f"the coordinator wrote no address on {host} in time\n{_tails(net, ['coordinator'])}")


def _wait(net: NetHarness, report: Path, deadline: float, say: Callable[[str], None],
          total_steps: int) -> dict[tuple[str, str], int]:
    """Until the coordinator exits 0; the tc counters from when its first plan appeared in the
    report of its directory `report`."""
    procs = net.processes
    start: dict[tuple[str, str], int] | None = None
    last_step = 0
    while True:
        code = procs.procs["coordinator"].poll()
        if start is None and _read(report).get("plans"):
            start = net.topology.counters()
        steps = _read(report).get("steps") or []
        if steps and steps[-1]["step"] != last_step:
            last_step = steps[-1]["step"]
            loss = steps[-1].get("loss")
            say(f"  step {last_step}: loss {'-' if loss is None else f'{loss:.3f}'}, {steps[-1]['seconds']:.2f} s")
        if code is not None:
            if code != 0:
                raise RuntimeError(f"the coordinator exited {code}\n{_tails(net, list(procs.procs))}")
            return start if start is not None else {}
        gone = {name: c for name, c in procs.dead().items()  # peers leave on their own only after the last step
                if name in net.topology.devices and (c != 0 or last_step < total_steps)}
        if gone:  # every device holds a cell and there are no spares: the run cannot finish without it
            raise RuntimeError(f"peer(s) exited before the run finished: {gone}\n{_tails(net, [*gone, 'coordinator'])}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run did not finish within --timeout (step {last_step} committed)\n"
                               f"{_tails(net, list(procs.procs))}")
        time.sleep(_POLL_S)


def _check_alive(net: NetHarness, name: str) -> None:
    code = net.processes.procs[name].poll()
    if code is not None:
        raise RuntimeError(f"{name} exited {code} early\n{_tails(net, [name])}")


def _read(directory: Path) -> dict[str, Any]:
    try:
        return read_report(directory)
    except (OSError, ValueError):  # not written yet
        return {}


def _tails(net: NetHarness, names: list[str]) -> str:
    return "\n".join(f"--- {name}.log\n{net.processes.log(name, 1500)}" for name in names)
