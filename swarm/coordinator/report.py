"""The coordinator's record of a run: every plan and why it changed, every committed step.

An append-only log, `DIR/report.jsonl`: one JSON line per entry as it happens (a plan, a committed
step with its losses and the replicas' parameter checksums, an event, a rollback, a checkpoint),
flushed at once. A commit costs one line however long the run; rewriting one JSON file per commit
cost ~1 GB of writing per commit by step 10,000 at 1,024 peers. `read_report` folds the log back
into the one account an operator, the demo and the churn tests read: plan versions with their
reasons, the loss and throughput of each step (with the cumulative bytes per channel at that
step), the replicas' checksums per stage, and bytes per channel. A rollback is a line too: folding
drops the steps it abandoned. A resumed coordinator continues the same log.

Its live views (`serve`: the per-concern logs, the metrics, the `--http` dashboard) are
`ReportListener`s told of every plan, step and checkpoint as the coordinator records it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from peers.protocol import PeerRecord, PlanRecord, to_builtins

if TYPE_CHECKING:
    from .daemon import Coordinator

__all__ = ["RunReport", "ReportListener", "read_report", "REPORT_LOG"]

REPORT_LOG = "report.jsonl"  # in the coordinator's --checkpoint-dir

# The log's lines, each {"kind": ..., ...}:
#   plan        {"entry": plan entry}
#   step        {"entry": step entry, "observed": observation}   one per commit
#   observe     {"observed": observation}                        an observation without its step
#   event       {"entry": event entry}
#   rollback    {"entry": the "rollback" event}: steps and checksums after entry["to_step"] are dropped
#   checkpoint  {"path": newest checkpoint}
#   sent        {"peers": {peer: {"bytes": {...}, "values": {...}}}}: the most each announced
# An observation is {"checksums": new {step: {stage: {peer: checksum}}}, "mismatches": new ones,
# "bytes": totals per channel, "values": totals per channel}. Per-peer traffic is written when a
# peer leaves, at checkpoints and at close, not per commit: at 1,024 peers it would be most of
# each line, and only a resumed coordinator needs it (live peers announce their totals again).


def read_report(path: Path | str) -> dict[str, Any]:
    """The run's report as one dict, the shape of `RunReport.to_dict()`; `path` is the log or its
    directory (a directory from before the log, holding only `report.json`, is read as that file).

    A last line without its newline (the coordinator died writing it, or is writing it now) is not
    yet part of the log and is left out. Raises OSError when there is no report, ValueError when a
    complete line is not a JSON object.
    """
    path = Path(path)
    if path.is_dir():
        legacy = path / "report.json"
        path = legacy if legacy.exists() and not (path / REPORT_LOG).exists() else path / REPORT_LOG
    if path.suffix == ".json":
        value = json.loads(path.read_text())
        if not isinstance(value, dict):
            raise ValueError(f"{path} holds no JSON object")
        return value
    return _fold(_read_log(path)[0])


class ReportListener:
    """Told of what the report records, on the coordinator's thread (keep it quick); no-ops here."""

    def on_plan(self, entry: dict[str, Any], plan: PlanRecord) -> None: ...

    def on_step(self, entry: dict[str, Any]) -> None: ...

    def on_observe(self, plan: PlanRecord, records: dict[str, PeerRecord]) -> None: ...

    def on_event(self, entry: dict[str, Any]) -> None: ...

    def on_checkpoint(self, path: str) -> None: ...

    def close(self) -> None: ...


class RunReport:
    """The run's account in memory (the live views read it), each entry appended to the log.

    `RunReport(DIR / "report.jsonl")` (or `RunReport(DIR)`) starts a new log, replacing one there;
    `resume=True` reads the log back and continues it, as `swarm-coordinator --resume` does.
    """

    def __init__(self, path: Path, resume: bool = False) -> None:
        self.path = path / REPORT_LOG if path.is_dir() else path
        previous: dict[str, Any] = {}
        end = 0
        if resume and self.path.exists():
            entries, end = _read_log(self.path)
            previous = _fold(entries)
        self.plans: list[dict[str, Any]] = previous.get("plans", [])
        self.steps: list[dict[str, Any]] = previous.get("steps", [])
        self.checksums: dict[str, dict[str, dict[str, str]]] = previous.get("checksums", {})
        self.mismatches: list[dict[str, Any]] = previous.get("mismatches", [])
        self.events: list[dict[str, Any]] = previous.get("events", [])
        # The most each peer announced ({peer: {"bytes": {channel: n}, "values": {...}}}): a peer that
        # left keeps its share of the totals, which are their sums.
        self.sent_per_peer: dict[str, dict[str, dict[str, int]]] = previous.get("sent_per_peer", {})
        self.bytes, self.values = _sum_sent(self.sent_per_peer)
        self._checkpoint: str | None = previous.get("checkpoint")
        self.listeners: list[ReportListener] = []
        self._log: IO[bytes] = open(self.path, "ab" if resume else "wb")  # closed by close()
        self._log.truncate(end)  # a line the crash tore must not swallow the next one
        self._pending: dict[str, Any] | None = None  # the newest step, written with its observation
        self._unwritten: set[str] = set()  # peers whose traffic grew since their last "sent" line

    @property
    def checkpoint(self) -> str | None:
        """The path of the newest checkpoint written."""
        return self._checkpoint

    @checkpoint.setter
    def checkpoint(self, path: str | None) -> None:
        self._checkpoint = path
        if path is not None:
            self._append({"kind": "checkpoint", "path": path})
            self._write_sent(set(self._unwritten))
            self._sync()  # a checkpoint is where a resume starts: make the account up to it durable
            for listener in self.listeners:
                listener.on_checkpoint(path)

    def serve(self, coordinator: Coordinator) -> dict[str, str]:
        """Start the live views of `coordinator`'s report: logs per concern, metrics and, with
        `--http`, the dashboard; returns what DIR/coordinator.json announces ({"dashboard": URL})."""
        from .telemetry import CoordinatorTelemetry  # the HTTP server and prometheus-client, only when run

        telemetry = CoordinatorTelemetry(coordinator)
        self.listeners.append(telemetry)
        return telemetry.start()

    def close(self) -> None:
        """Stop the live views; write what is pending and close the log (again: a no-op)."""
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        if self._log.closed:
            return
        self.save()
        self._write_sent(set(self._unwritten))
        self._sync()
        self._log.close()

    def save(self) -> None:
        """Make everything recorded so far readable: the coordinator calls it after each commit and plan."""
        self._write_pending(None)
        self._log.flush()

    def event(self, what: str, **details: Any) -> None:
        self._record("event", {"time": time.time(), "event": what, **details})

    def rollback(self, step: int) -> None:
        """Training restarts after checkpoint `step`: later steps and checksums belong to an abandoned
        timeline, so they leave the record (the event counts them) and each step appears once."""
        abandoned = [entry["step"] for entry in self.steps if int(entry["step"]) > step]
        self.steps = [entry for entry in self.steps if int(entry["step"]) <= step]
        self.checksums = {k: v for k, v in self.checksums.items() if int(k) <= step}
        self._record("rollback", {"time": time.time(), "event": "rollback", "to_step": step,
                                  "abandoned_steps": abandoned})

    def plan(self, plan: PlanRecord) -> None:
        wire = plan.to_wire()
        kept = ("version", "start_step", "grid", "layers", "standby", "sources", "reason")
        entry = {**{key: wire[key] for key in kept}, "timeouts": wire["training"]["timeouts"], "time": time.time()}
        self.plans.append(entry)
        self._append({"kind": "plan", "entry": entry})
        for listener in self.listeners:
            listener.on_plan(entry, plan)

    def step(self, step: int, plan_version: int, losses: dict[str, float], tokens_per_s: float,
             seconds: float) -> None:
        """losses: each last-stage replica's loss (the step's loss is their mean). Written with the
        `observe` that follows it (or at the next entry or `save`), as one line."""
        loss = sum(losses.values()) / len(losses) if losses else None
        entry = {"step": step, "plan_version": plan_version, "loss": loss, "losses": losses,
                 "tokens_per_s": tokens_per_s, "seconds": seconds, "time": time.time()}
        self._write_pending(None)
        self.steps.append(entry)
        self._pending = entry
        for listener in self.listeners:
            listener.on_step(entry)

    def observe(self, plan: PlanRecord, records: dict[str, PeerRecord]) -> None:
        """Note each member's checksum at its applied step, and traffic totals; flag disagreements."""
        fresh: dict[str, dict[str, dict[str, str]]] = {}
        found: list[dict[str, Any]] = []
        for name in plan.members():
            record = records.get(name)
            if record is None or not record.param_checksum or record.step <= 0:
                continue
            stage = str(plan.position(name)[0])  # type: ignore[index]
            seen = self.checksums.setdefault(str(record.step), {}).setdefault(stage, {})
            if seen.get(name) != record.param_checksum:
                seen[name] = record.param_checksum
                fresh.setdefault(str(record.step), {}).setdefault(stage, {})[name] = record.param_checksum
            if len(set(seen.values())) > 1 and not any(m["step"] == record.step and m["stage"] == int(stage)
                                                       for m in self.mismatches):
                found.append({"step": record.step, "stage": int(stage), "checksums": dict(seen)})
                self.mismatches.append(found[-1])
        for name, record in records.items():
            if name not in self.sent_per_peer:
                self._unwritten.add(name)
            sent = self.sent_per_peer.setdefault(name, {"bytes": {}, "values": {}})
            for table, counts in (("bytes", record.bytes_sent), ("values", record.values_sent)):
                for channel, n in counts.items():
                    if int(n) > sent[table].get(channel, 0):
                        sent[table][channel] = int(n)
                        self._unwritten.add(name)
        self.bytes, self.values = _sum_sent(self.sent_per_peer)  # new dicts, swapped in whole: the dashboard reads
        if self.steps:  # observed right after the commit it follows: the traffic up to that step
            self.steps[-1]["bytes"] = dict(self.bytes)
            # each member's latest StepBreakdown: its "step" says which (a commit's own wait is known after it)
            self.steps[-1]["breakdown"] = {name: to_builtins(record.breakdown) for name in plan.members()
                                           if (record := records.get(name)) is not None and record.breakdown}
        observed = {"checksums": fresh, "mismatches": found, "bytes": self.bytes, "values": self.values}
        if self._pending is None:
            self._append({"kind": "observe", "observed": observed})
        else:
            self._write_pending(observed)
        self._write_sent({name for name in self._unwritten if name not in records})  # it left: keep its share
        for listener in self.listeners:
            listener.on_observe(plan, records)

    def bits_per_value(self) -> dict[str, float]:
        return _bits_per_value(self.bytes, self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"plans": self.plans, "steps": self.steps, "checksums": self.checksums,
                "mismatches": self.mismatches, "events": self.events, "bytes_per_channel": self.bytes,
                "values_per_channel": self.values, "bits_per_value": self.bits_per_value(),
                "sent_per_peer": self.sent_per_peer, "checkpoint": self.checkpoint}

    def _record(self, kind: str, entry: dict[str, Any]) -> None:
        self.events.append(entry)
        self._append({"kind": kind, "entry": entry})
        for listener in self.listeners:
            listener.on_event(entry)

    def _write_sent(self, names: set[str]) -> None:
        if names:
            self._append({"kind": "sent", "peers": {name: self.sent_per_peer[name] for name in sorted(names)}})
            self._unwritten -= names

    def _write_pending(self, observed: dict[str, Any] | None) -> None:
        if self._pending is not None:
            line = {"kind": "step", "entry": self._pending, **({"observed": observed} if observed else {})}
            self._pending = None
            self._write(line)

    def _append(self, line: dict[str, Any]) -> None:
        self._write_pending(None)
        self._write(line)

    def _write(self, line: dict[str, Any]) -> None:
        """One line, whole, flushed so readers see it (no fsync: a process crash loses nothing flushed)."""
        self._log.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        self._log.flush()

    def _sync(self) -> None:
        self._log.flush()
        os.fsync(self._log.fileno())


def _read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The log's lines and the byte length they fill; a last line without its newline is not in it."""
    entries: list[dict[str, Any]] = []
    end = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.endswith(b"\n"):
                break  # torn by a crash, or being written right now
            if raw.strip():
                try:
                    entry = json.loads(raw)
                except ValueError as error:
                    raise ValueError(f"{path}:{number}: not JSON ({error})") from None
                if not isinstance(entry, dict):
                    raise ValueError(f"{path}:{number}: not a JSON object")
                entries.append(entry)
            end += len(raw)
    return entries, end


def _fold(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The log's lines as `RunReport.to_dict()` had them when the last was written."""
    plans: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    checksums: dict[str, dict[str, dict[str, str]]] = {}
    mismatches: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    sent_per_peer: dict[str, dict[str, dict[str, int]]] = {}
    checkpoint: str | None = None
    totals: tuple[dict[str, int], dict[str, int]] | None = None
    for line in lines:
        kind = line.get("kind")
        if kind == "plan":
            plans.append(line["entry"])
        elif kind == "step":
            steps.append(line["entry"])
        elif kind in ("event", "rollback"):
            events.append(line["entry"])
        elif kind == "checkpoint":
            checkpoint = line["path"]
        elif kind == "sent":
            sent_per_peer.update(line["peers"])
        if kind == "rollback":
            to_step = int(line["entry"]["to_step"])
            steps = [entry for entry in steps if int(entry["step"]) <= to_step]
            checksums = {k: v for k, v in checksums.items() if int(k) <= to_step}
        if observed := line.get("observed"):
            for step, stages in observed["checksums"].items():
                for stage, seen in stages.items():
                    checksums.setdefault(step, {}).setdefault(stage, {}).update(seen)
            mismatches.extend(observed["mismatches"])
            totals = observed["bytes"], observed["values"]
            if steps:
                steps[-1]["bytes"] = dict(totals[0])
    sent_bytes, sent_values = totals or _sum_sent(sent_per_peer)
    return {"plans": plans, "steps": steps, "checksums": checksums, "mismatches": mismatches, "events": events,
            "bytes_per_channel": sent_bytes, "values_per_channel": sent_values,
            "bits_per_value": _bits_per_value(sent_bytes, sent_values), "sent_per_peer": sent_per_peer,
            "checkpoint": checkpoint}


def _sum_sent(sent_per_peer: dict[str, dict[str, dict[str, int]]]) -> tuple[dict[str, int], dict[str, int]]:
    """Traffic per channel (bytes, values): the sum over every peer ever seen of the most it announced."""
    totals: dict[str, dict[str, int]] = {"bytes": {}, "values": {}}
    for sent in sent_per_peer.values():
        for table, counts in totals.items():
            for channel, n in sent.get(table, {}).items():
                counts[channel] = counts.get(channel, 0) + n
    return totals["bytes"], totals["values"]


def _bits_per_value(sent_bytes: dict[str, int], values: dict[str, int]) -> dict[str, float]:
    return {ch: 8 * sent_bytes[ch] / values[ch] for ch in sent_bytes if values.get(ch)}
