"""The coordinator's record of a run: every plan and why it changed, every committed step.

Written to `DIR/report.json` (atomically) after each commit and plan change, so an operator, the
demo and the churn tests read the same account: plan versions with their reasons, the loss and
throughput of each step (with the cumulative bytes per channel at that step), the replicas'
parameter checksums per stage, and bytes per channel.

Its live views (`serve`: the per-concern logs, the metrics, the `--http` dashboard) are
`ReportListener`s told of every plan, step and checkpoint as the coordinator records it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peers.protocol import PeerRecord, PlanRecord

from .checkpoint import write_json_atomic

if TYPE_CHECKING:
    from .daemon import Coordinator

__all__ = ["RunReport", "ReportListener"]


class ReportListener:
    """Told of what the report records, on the coordinator's thread (keep it quick); no-ops here."""

    def on_plan(self, entry: dict[str, Any], plan: PlanRecord) -> None: ...

    def on_step(self, entry: dict[str, Any]) -> None: ...

    def on_observe(self, plan: PlanRecord, records: dict[str, PeerRecord]) -> None: ...

    def on_event(self, entry: dict[str, Any]) -> None: ...

    def on_checkpoint(self, path: str) -> None: ...

    def close(self) -> None: ...


class RunReport:
    """Accumulates plans and steps; `save()` writes the JSON file."""

    def __init__(self, path: Path, previous: dict[str, Any] | None = None) -> None:
        self.path = path
        previous = previous or {}
        self.plans: list[dict[str, Any]] = list(previous.get("plans", []))
        self.steps: list[dict[str, Any]] = list(previous.get("steps", []))
        self.checksums: dict[str, dict[str, dict[str, str]]] = dict(previous.get("checksums", {}))
        self.mismatches: list[dict[str, Any]] = list(previous.get("mismatches", []))
        self.events: list[dict[str, Any]] = list(previous.get("events", []))
        # The most each peer announced ({peer: {"bytes": {channel: n}, "values": {...}}}): a peer that
        # left keeps its share of the totals, which are their sums.
        self.sent_per_peer: dict[str, dict[str, dict[str, int]]] = dict(previous.get("sent_per_peer", {}))
        self.bytes: dict[str, int] = {}
        self.values: dict[str, int] = {}
        self._total_sent()
        self._checkpoint: str | None = previous.get("checkpoint")
        self.listeners: list[ReportListener] = []

    @property
    def checkpoint(self) -> str | None:
        """The path of the newest checkpoint written."""
        return self._checkpoint

    @checkpoint.setter
    def checkpoint(self, path: str | None) -> None:
        self._checkpoint = path
        if path is not None:
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
        """Stop the live views and write the file."""
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        self.save()

    def event(self, what: str, **details: Any) -> None:
        entry = {"time": time.time(), "event": what, **details}
        self.events.append(entry)
        for listener in self.listeners:
            listener.on_event(entry)

    def rollback(self, step: int) -> None:
        """Training restarts after checkpoint `step`: later steps and checksums belong to an abandoned
        timeline, so they leave the record (the event counts them) and each step appears once."""
        abandoned = [entry["step"] for entry in self.steps if int(entry["step"]) > step]
        self.steps = [entry for entry in self.steps if int(entry["step"]) <= step]
        self.checksums = {k: v for k, v in self.checksums.items() if int(k) <= step}
        self.event("rollback", to_step=step, abandoned_steps=abandoned)

    def plan(self, plan: PlanRecord) -> None:
        wire = plan.to_wire()
        kept = ("version", "start_step", "grid", "layers", "standby", "sources", "reason")
        entry = {**{key: wire[key] for key in kept}, "time": time.time()}
        self.plans.append(entry)
        for listener in self.listeners:
            listener.on_plan(entry, plan)

    def step(self, step: int, plan_version: int, losses: dict[str, float], tokens_per_s: float,
             seconds: float) -> None:
        """losses: each last-stage replica's loss (the step's loss is their mean)."""
        loss = sum(losses.values()) / len(losses) if losses else None
        entry = {"step": step, "plan_version": plan_version, "loss": loss, "losses": losses,
                 "tokens_per_s": tokens_per_s, "seconds": seconds, "time": time.time()}
        self.steps.append(entry)
        for listener in self.listeners:
            listener.on_step(entry)

    def observe(self, plan: PlanRecord, records: dict[str, PeerRecord]) -> None:
        """Note each member's checksum at its applied step, and traffic totals; flag disagreements."""
        for name in plan.members():
            record = records.get(name)
            if record is None or not record.param_checksum or record.step <= 0:
                continue
            stage = str(plan.position(name)[0])  # type: ignore[index]
            seen = self.checksums.setdefault(str(record.step), {}).setdefault(stage, {})
            seen[name] = record.param_checksum
            if len(set(seen.values())) > 1 and not any(m["step"] == record.step and m["stage"] == int(stage)
                                                       for m in self.mismatches):
                self.mismatches.append({"step": record.step, "stage": int(stage), "checksums": dict(seen)})
        for name, record in records.items():
            sent = self.sent_per_peer.setdefault(name, {"bytes": {}, "values": {}})
            for table, counts in (("bytes", record.bytes_sent), ("values", record.values_sent)):
                for channel, n in counts.items():
                    sent[table][channel] = max(sent[table].get(channel, 0), int(n))
        self._total_sent()
        if self.steps:  # observed right after the commit it follows: the traffic up to that step
            self.steps[-1]["bytes"] = dict(self.bytes)
        for listener in self.listeners:
            listener.on_observe(plan, records)

    def _total_sent(self) -> None:
        """Traffic per channel: the sum over every peer ever seen of the most it announced (new dicts,
        swapped in whole: the dashboard's threads read them)."""
        totals: dict[str, dict[str, int]] = {"bytes": {}, "values": {}}
        for sent in self.sent_per_peer.values():
            for table, counts in totals.items():
                for channel, n in sent.get(table, {}).items():
                    counts[channel] = counts.get(channel, 0) + n
        self.bytes, self.values = totals["bytes"], totals["values"]

    def bits_per_value(self) -> dict[str, float]:
        return {ch: 8 * self.bytes[ch] / self.values[ch] for ch in self.bytes if self.values.get(ch)}

    def to_dict(self) -> dict[str, Any]:
        return {"plans": self.plans, "steps": self.steps, "checksums": self.checksums,
                "mismatches": self.mismatches, "events": self.events, "bytes_per_channel": self.bytes,
                "values_per_channel": self.values, "bits_per_value": self.bits_per_value(),
                "sent_per_peer": self.sent_per_peer, "checkpoint": self.checkpoint}

    def save(self) -> None:
        write_json_atomic(self.path, self.to_dict())
