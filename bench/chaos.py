"""Chaos in the live swarm: peers SIGKILLed and replaced, a straggler, the coordinator killed and resumed.

    python bench/chaos.py                                   # 5 minutes of chaos, then the run to its last step
    python bench/chaos.py --duration 60 --kill-every 20 --steps 120 --out chaos.json

Six peers train `tiny` as real processes on loopback, 2 stages x 3 replicas (batch 12: 3 replicas x
2 micro-batches x 2 sequences, and it still splits when a repair leaves 2 replicas or 1). The chaos
window opens at the first committed step and lasts `--duration` s: every `--kill-every` s a random
training peer (drawn with `--seed`, from whoever trains at that moment) is SIGKILLed and a peer with a
new name started; at 1/3 of the window a training peer is SIGSTOPped for 20 s (a straggler) and then
SIGCONTed; at 2/3 the coordinator is SIGKILLed and restarted with the same flags plus `--resume` on
the same port. Then the swarm runs untouched to `--steps` for as long as it keeps committing (a step
at least every `--settle` s: slower is a slow machine, nothing for that long is stuck). One line per
action goes to stderr with the committed step; one JSON object to stdout (and to `--out`).

Checks, exit 1 if any fails: every action happened while the run trained (else raise `--steps`);
the target step reached and the coordinator exited 0; every step committed exactly once in the
report's timeline; the replicas' checksums equal at every step where
more than one reported, and no mismatch flagged; every checkpoint on disk loads (`latest.json`, each
`step-*`'s meta.json, every blob's sha256, each stage blob's stage and step); every peer that was not
SIGKILLed exited 0; and once the swarm is closed nothing is left behind: no process of the run (seen
while it ran, or with the work directory in its command line or environment: p2pd included), no
socket one of them listened on, no temporary file (`.tmp-*`/`*.tmp` in the work directory, a unix
socket file one of them listened on - those of daemons SIGKILLed here are only reported -, anything
in the work directory but logs, checkpoints and the cache).
The JSON also counts plan changes by reason, departures by cause, rollbacks and actions, and names
the machine's CPU. The work directory is removed unless `--keep`, or a check failed (its logs say why).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from swarm.launcher import LocalSwarm, free_port

PEERS, BATCH, MICRO_BATCHES = 6, 12, 2
STRAGGLE_S = 20.0
START_TIMEOUT_S = 300.0  # 7 processes importing torch on a small machine
PEER_EXIT_S = 60.0
SETTLE_CAP_S = 1800.0  # after the window: a progressing swarm is given this long to reach --steps
# What may outlive close() by a few seconds without having been left behind: each `torch_shm_manager`
# (hivemind shares tensors through torch's file_system strategy) runs in its own session and exits 2 s
# after its last client; the orphans of the last SIGKILLs are init's to reap.
LINGER_S = 15.0
EXPECTED = {"checkpoints", "cache"}  # besides NAME.log: what a closed run leaves in its work directory
# leftovers reported but not failing: dead processes init has yet to reap, and the files of daemons
# SIGKILLed on purpose (their multiprocessing listeners in /tmp/pymp-*: no process survives to remove them)
INFORMATIONAL = {"zombies", "socket_files_of_sigkilled"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of chaos [default: %(default)s]")
    parser.add_argument("--kill-every", type=float, default=30.0,
                        help="seconds between two SIGKILLs of a training peer [default: %(default)s]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the victims' draw [default: %(default)s]")
    parser.add_argument("--steps", type=int, default=600,
                        help="the run's target step: one the swarm reaches only after the chaos window (2 idle "
                             "cores commit ~100 steps/min undisturbed, fewer under chaos; a busy machine only "
                             "takes longer); raise it on a faster machine [default: %(default)s]")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="after the window the swarm runs to --steps as long as it commits a step at least "
                             f"every SETTLE s (at most {SETTLE_CAP_S:.0f} s in all) [default: %(default)s]")
    parser.add_argument("--checkpoint-every", type=int, default=25, metavar="K",
                        help="the coordinator's --checkpoint-every [default: %(default)s]")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--workdir", type=Path, help="run here (new or empty) [default: a temporary directory]")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, checkpoints, report)")
    args = parser.parse_args(argv)
    if args.duration < 30 or args.kill_every <= 0 or args.steps <= 0 or args.settle <= 0:
        parser.error("--duration must be at least 30 s, and --kill-every, --steps and --settle positive")
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty: give a new or empty directory")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="swarm-chaos-"))).resolve()
    result = _run(args, workdir)
    passed = all(result["checks"].values())
    result["passed"] = passed
    result["workdir"] = str(workdir) if args.keep or not passed else None
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    failed = [name for name, ok in result["checks"].items() if not ok]
    kept = "" if result["workdir"] is None else f"; logs in {workdir}"
    print(f"chaos: {'PASS' if passed else 'FAIL'}: {len(result['checks']) - len(failed)}/{len(result['checks'])} "
          f"checks passed{'; failed: ' + ', '.join(failed) if failed else ''}; step {result['final_step']}/"
          f"{args.steps}, {len(result['actions'])} actions{kept}", file=sys.stderr)
    if result["workdir"] is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if passed else 1


class Chaos:
    """The scripted faults, each logged as an action with the step committed when it happened."""

    def __init__(self, swarm: LocalSwarm, coordinator_args: list[str], rng: random.Random) -> None:
        self.swarm, self.args, self.rng = swarm, coordinator_args, rng
        self.coordinator = "coordinator"
        self.peers: list[str] = []
        self.killed: set[str] = set()
        self.stopped: str | None = None
        self.actions: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.started_wall = time.time()

    def start(self) -> None:
        self.swarm.start_coordinator(self.args)
        for _ in range(PEERS):
            self._new_peer()
        self.swarm.wait_for(lambda: self.swarm.committed_step() >= 1, START_TIMEOUT_S, "step 1")
        self.started, self.started_wall = time.monotonic(), time.time()

    def run(self, duration: float, kill_every: float) -> None:
        """Every action of the window at its time; stops early (resuming a straggler) if the run ends."""
        kills = int(duration / kill_every)
        events = [(k * kill_every, "kill") for k in range(1, kills + 1) if k * kill_every < duration]
        events += [(duration / 3, "stop"), (duration / 3 + STRAGGLE_S, "cont"), (2 * duration / 3, "restart")]
        for at, kind in sorted(events):
            while time.monotonic() < self.started + at and not self.finished():
                time.sleep(0.2)
            if self.finished():
                self._act("ended", "the run reached its last step before the chaos window closed")
                break
            getattr(self, kind)()
        if self.stopped is not None:
            self.cont()

    def finished(self) -> bool:
        return self.swarm.processes[self.coordinator].poll() is not None

    def kill(self) -> None:
        victim = self._training_peer()
        if victim is None:
            self._act("kill", "no training peer to kill: skipped")
            return
        self.swarm.kill(victim, signal.SIGKILL)
        self.killed.add(victim)
        replacement = self._new_peer()
        self._act("kill", f"SIGKILL {victim}, started {replacement}", victim=victim, replacement=replacement)

    def stop(self) -> None:
        self.stopped = self._training_peer()
        if self.stopped is None:
            self._act("stop", "no training peer to stop: skipped")
            return
        self.swarm.kill(self.stopped, signal.SIGSTOP)
        self._act("stop", f"SIGSTOP {self.stopped} for {STRAGGLE_S:.0f} s", victim=self.stopped)

    def cont(self) -> None:
        if self.stopped is not None:
            self.swarm.kill(self.stopped, signal.SIGCONT)
            self._act("cont", f"SIGCONT {self.stopped}", victim=self.stopped)
            self.stopped = None

    def restart(self) -> None:
        self.swarm.kill(self.coordinator, signal.SIGKILL)
        self.swarm.wait_exit(self.coordinator, 30)
        self.killed.add(self.coordinator)
        self._act("kill_coordinator", f"SIGKILL {self.coordinator}", victim=self.coordinator)
        self.coordinator = f"coordinator{sum(name.startswith('coordinator') for name in self.swarm.processes) + 1}"
        self.swarm.start_coordinator([*self.args, "--resume"], name=self.coordinator)
        self._act("resume", f"started {self.coordinator} with --resume", name=self.coordinator)

    def settle(self, stall: float) -> int | None:
        """The coordinator's exit code once it finishes the run; None if it committed no step for `stall` s
        (stuck: a livelock) or ran past SETTLE_CAP_S. A slow machine only makes this take longer."""
        deadline = time.monotonic() + SETTLE_CAP_S
        step, progressed = self.swarm.committed_step(), time.monotonic()
        while time.monotonic() < min(deadline, progressed + stall):
            try:
                return self.swarm.wait_exit(self.coordinator, 5)
            except subprocess.TimeoutExpired:
                if (now := self.swarm.committed_step()) > step:
                    step, progressed = now, time.monotonic()
        why = f"still running after {SETTLE_CAP_S:.0f} s" if time.monotonic() >= deadline else "stuck"
        self._act("stuck", f"{why}: no step committed in the last {time.monotonic() - progressed:.0f} s")
        return None

    def peer_exit_codes(self, finished: bool) -> dict[str, int | None]:
        """Each peer not SIGKILLed here: its exit code (None: still running); waits only for a finished run."""
        deadline = time.monotonic() + (PEER_EXIT_S if finished else 0)
        codes: dict[str, int | None] = {}
        for name in (n for n in self.peers if n not in self.killed):
            try:
                codes[name] = self.swarm.wait_exit(name, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[name] = None
        return codes

    def _new_peer(self) -> str:
        name = f"p{len(self.peers) + 1}"
        self.swarm.start_peer(name)
        self.peers.append(name)
        return name

    def _training_peer(self) -> str | None:
        """A random member of the newest plan's grid that was not SIGKILLed and is not the straggler."""
        plans = self.swarm.report().get("plans") or [{"grid": []}]
        grid = [name for row in plans[-1]["grid"] for name in row]
        alive = sorted(n for n in grid if n in self.peers and n != self.stopped and n not in self.killed)
        return self.rng.choice(alive) if alive else None

    def _act(self, action: str, text: str, **details: Any) -> None:
        elapsed, step = time.monotonic() - self.started, self.swarm.committed_step()
        self.actions.append({"t_s": round(elapsed, 1), "action": action, "step": step, **details})
        print(f"chaos [{elapsed:6.1f} s] step {step:5d}: {text}", file=sys.stderr, flush=True)


class ProcessWatch:
    """The run's processes (each daemon's session: DHT children and p2pd too) and the sockets they
    listen on, sampled every `every` s while it runs, so that after `close()` what is left can be named."""

    def __init__(self, swarm: LocalSwarm, every: float = 2.0) -> None:
        self.swarm, self.every = swarm, every
        self.marker = str(swarm.dir)
        self.seen: dict[tuple[int, int], str] = {}  # (pid, start time): command line
        self.sockets: dict[str, str] = {}  # inode: what listened there
        self.unix_paths: dict[str, str] = {}  # a socket file: the daemon whose session listened there
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="process-watch", daemon=True)

    def __enter__(self) -> "ProcessWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def leftovers(self, sigkilled: set[str]) -> dict[str, list[str]]:
        """After the swarm closed: processes of the run still there (zombies apart: dead, their reaping is
        init's), sockets of the run still listening, and the socket files its processes listened on still
        on disk, apart from those of daemons SIGKILLed here (`sigkilled`), which nothing could clean up."""
        processes: list[str] = []
        zombies: list[str] = []
        for pid in _pids():
            stat = _stat(pid)
            if stat is None or pid == os.getpid():
                continue
            text = _read(pid, "cmdline")
            if (pid, stat[2]) in self.seen or self.marker in text or self.marker in _read(pid, "environ"):
                (zombies if stat[0] == "Z" else processes).append(f"{pid} ({stat[0]}): {text[:200]}")
        listening = _listening()
        files = {path: owner for path, owner in self.unix_paths.items() if os.path.exists(path)}
        return {"processes": processes, "zombies": zombies,
                "sockets": [self.sockets[inode] for inode in listening if inode in self.sockets],
                "socket_files": sorted(f"{path} ({owner})" for path, owner in files.items() if owner not in sigkilled),
                "socket_files_of_sigkilled": sorted(f"{path} ({owner})" for path, owner in files.items()
                                                    if owner in sigkilled)}

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            sessions = {process.pid: name for name, process in list(self.swarm.processes.items())}
            listening = _listening()
            for pid in _pids():
                stat = _stat(pid)
                if stat is None or stat[1] not in sessions:
                    continue
                owner = f"{sessions[stat[1]]}'s pid {pid}"
                self.seen.setdefault((pid, stat[2]), _read(pid, "cmdline")[:200])
                for inode in _socket_inodes(pid) & set(listening):
                    self.sockets[inode] = f"{listening[inode]} ({owner})"
                    if listening[inode].startswith("/"):
                        self.unix_paths[listening[inode]] = sessions[stat[1]]


def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    coordinator_args = ["--listen", f"127.0.0.1:{free_port()}", "--model", "tiny", "--steps", str(args.steps),
                        "--batch", str(BATCH), "--micro-batches", str(MICRO_BATCHES), "--stages", "2",
                        "--replicas", str(PEERS // 2), "--checkpoint-every", str(args.checkpoint_every)]
    error = None
    with LocalSwarm(workdir) as swarm, ProcessWatch(swarm) as watch:
        chaos = Chaos(swarm, coordinator_args, random.Random(args.seed))
        launched = time.monotonic()
        code: int | None = None
        try:
            chaos.start()
            startup_s = time.monotonic() - launched
            chaos.run(args.duration, args.kill_every)
            code = chaos.settle(args.settle)
        except TimeoutError as failure:  # never reached step 1: the logs' tails say why
            error, startup_s = str(failure)[-4000:], time.monotonic() - launched
        exit_codes = chaos.peer_exit_codes(finished=code == 0)
        swarm.close()
        report = swarm.report()
        closed = time.monotonic()
        left = watch.leftovers(chaos.killed)
        while (left["processes"] or left["zombies"]) and time.monotonic() < closed + LINGER_S:
            time.sleep(1)
            left = watch.leftovers(chaos.killed)
        lingered_s = round(time.monotonic() - closed, 1)
    left["temporary_files"] = sorted(str(p.relative_to(workdir)) for pattern in (".tmp-*", "*.tmp", ".*.tmp")
                                     for p in workdir.rglob(pattern))
    logs = {f"{name}.log" for name in swarm.processes}
    left["unexpected_files"] = sorted(p.name for p in workdir.iterdir() if p.name not in EXPECTED | logs)
    steps = report.get("steps", [])
    final = int(steps[-1]["step"]) if steps else 0
    checkpoints = _check_checkpoints(swarm.checkpoint_dir)
    checksums = _check_checksums(report)
    plans = report.get("plans", [])
    rollbacks = [e for e in report.get("events", []) if e.get("event") == "rollback"]
    in_window = sum(1 for s in steps if chaos.started_wall <= s["time"] <= chaos.started_wall + args.duration)
    whole_s = steps[-1]["time"] - steps[0]["time"] if len(steps) > 1 else 0.0
    gaps = [later["time"] - earlier["time"] for earlier, later in zip(steps, steps[1:], strict=False)]
    result: dict[str, Any] = {
        "benchmark": "chaos", "machine": _machine(), "model": "tiny", "grid": f"2x{PEERS // 2}", "peers": PEERS,
        "batch": BATCH, "micro_batches": MICRO_BATCHES, "seed": args.seed, "duration_s": args.duration,
        "kill_every_s": args.kill_every, "startup_s": round(startup_s, 1), "error": error,
        "target_step": args.steps, "target_reached": final >= args.steps, "final_step": final,
        "coordinator_exit_code": code,
        "steps_per_minute": {"chaos_window": round(60 * in_window / args.duration, 1),
                             "whole_run": round(60 * (len(steps) - 1) / whole_s, 1) if whole_s else None},
        "longest_commit_gap_s": round(max(gaps), 1) if gaps else None,  # the slowest recovery
        "tokens_per_s_median": statistics.median(s["tokens_per_s"] for s in steps) if steps else None,
        "actions": chaos.actions, "action_counts": dict(Counter(a["action"] for a in chaos.actions)),
        "plan_changes": dict(Counter(p["reason"]["change"] for p in plans)),
        "departures": dict(Counter(cause for p in plans for cause in p["reason"].get("lost", {}).values())),
        "rollbacks": len(rollbacks), "abandoned_steps": sum(len(e.get("abandoned_steps", [])) for e in rollbacks),
        "checksums": checksums, "mismatches": report.get("mismatches", []), "checkpoints": checkpoints,
        "peer_exit_codes": exit_codes, "leftovers": left, "last_process_gone_after_close_s": lingered_s}
    result["checks"] = {
        "chaos_completed": error is None and "ended" not in result["action_counts"],  # else: raise --steps
        "target_reached": result["target_reached"] and code == 0,
        "steps_committed_once": [int(s["step"]) for s in steps] == list(range(1, final + 1)) and final > 0,
        "replicas_agree": checksums["steps_compared"] > 0 and not checksums["disagreeing"]
        and not result["mismatches"],
        "checkpoints_load": not checkpoints["problems"] and bool(checkpoints["steps"]),
        "peers_exit_cleanly": all(c == 0 for c in exit_codes.values()),
        "nothing_left_behind": not any(found for kind, found in left.items() if kind not in INFORMATIONAL)}
    return result


def _check_checksums(report: dict[str, Any]) -> dict[str, Any]:
    """Steps at which some stage had more than one replica's checksum, and those at which they differed."""
    compared, disagreeing = set(), []
    for step, stages in report.get("checksums", {}).items():
        for stage, members in stages.items():
            if len(members) > 1:
                compared.add(int(step))
                if len(set(members.values())) > 1:
                    disagreeing.append({"step": int(step), "stage": int(stage), "checksums": members})
    return {"steps_compared": len(compared), "disagreeing": disagreeing}


def _check_checkpoints(directory: Path) -> dict[str, Any]:
    """Read back `latest.json` the way `--resume` does, and every `step-*` directory blob by blob."""
    from peers.daemon.stage_state import unpack_state  # torch: imported only once the swarm ran
    from swarm.coordinator.checkpoint import read_latest

    problems: list[str] = []
    latest = None
    try:
        latest = read_latest(directory).step
    except ValueError as error:
        problems.append(str(error))
    steps = []
    for path in sorted(directory.glob("step-*")):
        try:
            meta = json.loads((path / "meta.json").read_text())
            step, digests = int(meta["step"]), dict(meta["sha256"])
            steps.append(step)
            if path.name != f"step-{step:08d}":
                problems.append(f"{path.name}: its meta.json says step {step}")
            listed = {f"stage-{int(s)}.bin" for s in meta["stages"]} | {f"codec-{s}-{r}.bin" for s, r in meta["codec"]}
            files = sorted(p.name for p in path.iterdir())
            if listed != set(digests) or set(files) != listed | {"meta.json"}:
                problems.append(f"{path.name}: holds {files}, its meta.json lists {sorted(listed)}")
            for name, digest in sorted(digests.items()):
                blob = (path / name).read_bytes()
                if hashlib.sha256(blob).hexdigest() != digest:
                    problems.append(f"{path.name}/{name}: sha256 differs from meta.json's")
                elif name.startswith("stage-"):
                    state = unpack_state(blob)
                    if (state.step, f"stage-{state.stage}.bin") != (step, name):
                        problems.append(f"{path.name}/{name}: holds stage {state.stage} at step {state.step}")
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(f"{path.name}: {error}")
    return {"latest_step": latest, "steps": steps, "problems": problems}


def _machine() -> dict[str, Any]:
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0))}


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, session id, start time in clock ticks) of `pid`; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[3]), int(fields[19])


def _read(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:  # gone meanwhile, or an fd closed between listing and reading it
        pass
    return inodes


def _listening() -> dict[str, str]:
    """Every listening socket on this machine: inode -> "tcp 127.0.0.1:PORT" or a unix socket's path."""
    found = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for fields in (line.split() for line in lines):
            if fields[3] == "0A":  # LISTEN
                found[fields[9]] = f"{table} port {int(fields[1].rsplit(':', 1)[1], 16)}"
    for fields in (line.split() for line in Path("/proc/net/unix").read_text().splitlines()[1:]):
        if int(fields[3], 16) & 0x10000 and len(fields) > 7:  # __SO_ACCEPTCON: listening, and it has a path
            found[fields[6]] = fields[7]  # "@NAME": an abstract socket, no file
    return found


if __name__ == "__main__":
    sys.exit(main())
