"""The coordinator's record of a run: every plan and why it changed, every committed step.

Written to `DIR/report.json` (atomically) after each commit and plan change, so an operator, the
demo and the churn tests read the same account: plan versions with their reasons, the loss and
throughput of each step, the replicas' parameter checksums per stage, and bytes per channel.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from peers.protocol import PeerRecord, PlanRecord

from .checkpoint import write_json_atomic

__all__ = ["RunReport"]


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
        self.bytes: dict[str, int] = {}
        self.values: dict[str, int] = {}
        self.checkpoint: str | None = previous.get("checkpoint")

    def event(self, what: str, **details: Any) -> None:
        self.events.append({"time": time.time(), "event": what, **details})

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
        self.plans.append({**{key: wire[key] for key in kept}, "time": time.time()})

    def step(self, step: int, plan_version: int, losses: dict[str, float], tokens_per_s: float,
             seconds: float) -> None:
        """losses: each last-stage replica's loss (the step's loss is their mean)."""
        loss = sum(losses.values()) / len(losses) if losses else None
        self.steps.append({"step": step, "plan_version": plan_version, "loss": loss, "losses": losses,
                           "tokens_per_s": tokens_per_s, "seconds": seconds, "time": time.time()})

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
        totals_b: dict[str, int] = {}
        totals_v: dict[str, int] = {}
        for record in records.values():
            for channel, n in record.bytes_sent.items():
                totals_b[channel] = totals_b.get(channel, 0) + int(n)
            for channel, n in record.values_sent.items():
                totals_v[channel] = totals_v.get(channel, 0) + int(n)
        for channel in totals_b:  # peers that left took their counters along: keep the maximum seen
            self.bytes[channel] = max(self.bytes.get(channel, 0), totals_b[channel])
            self.values[channel] = max(self.values.get(channel, 0), totals_v.get(channel, 0))

    def bits_per_value(self) -> dict[str, float]:
        return {ch: 8 * self.bytes[ch] / self.values[ch] for ch in self.bytes if self.values.get(ch)}

    def to_dict(self) -> dict[str, Any]:
        return {"plans": self.plans, "steps": self.steps, "checksums": self.checksums,
                "mismatches": self.mismatches, "events": self.events, "bytes_per_channel": self.bytes,
                "values_per_channel": self.values, "bits_per_value": self.bits_per_value(),
                "checkpoint": self.checkpoint}

    def save(self) -> None:
        write_json_atomic(self.path, self.to_dict())
