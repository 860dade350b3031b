"""The coordinator's live views of its run: metrics, per-concern logs and the `--http` dashboard.

`CoordinatorTelemetry` listens to the `RunReport` (every plan, commit, observation and
checkpoint, on the coordinator's thread), counts them in `CoordinatorMetrics`, logs refused frames
and checkpoint transfers, and is the data source of the dashboard: `status()` is `swarm status
--json`'s `collect` over the coordinator's own DHT node (cached for a second, so many browser tabs
cost one DHT read), `history()` the report's per-step series and plan changes.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peers.metrics import rejections
from peers.protocol import PeerRecord, PlanChange, PlanRecord, to_builtins
from swarm.metrics import FP32_BITS, CoordinatorMetrics, SwarmView

from .logs import concern_logger
from .report import ReportListener

if TYPE_CHECKING:
    from swarm.dashboard.server import DashboardServer

    from .daemon import Coordinator

__all__ = ["CoordinatorTelemetry", "STATUS_TTL_S", "STEP_KEYS"]

STATUS_TTL_S = 1.0
# The per-step series of /api/history.
STEP_KEYS = ("step", "loss", "tokens_per_s", "seconds", "plan_version", "time", "bytes")
_SELF = "coordinator"  # the coordinator's own data port in the rejected-frames counts

log = logging.getLogger(__name__)


class CoordinatorTelemetry(ReportListener):
    """The live views of one coordinator; `start()` opens the dashboard when `--http` was given."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.report = coordinator.report
        self.metrics = CoordinatorMetrics(self.view)
        self._lock = threading.Lock()  # guards the status cache and the rejected counts
        self._status: dict[str, Any] | None = None
        self._status_at = -math.inf
        self._rejected: dict[tuple[str, str], int] = {}
        self._commit_clock = time.monotonic()
        self._server: DashboardServer | None = None
        self._plans, self._rejects = concern_logger("plans"), concern_logger("rejects")
        self._transfers = concern_logger("transfers")

    def start(self) -> dict[str, str]:
        """Serve the dashboard if `--http` was given; what coordinator.json announces about it."""
        http = self.coordinator.config.http
        if http is None:
            return {}
        from swarm.dashboard.server import DashboardServer

        self._server = DashboardServer(http[0], http[1], self)
        url = self._server.start()
        self.coordinator.on_event(f"dashboard at {url} (JSON: {url}api/status, {url}api/history; "
                                  f"Prometheus: {url}metrics)")
        return {"dashboard": url}

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    # ---- the report's events (the coordinator's thread) -------------------------------------

    def on_plan(self, entry: dict[str, Any], plan: PlanRecord) -> None:
        reason = plan.reason
        self.metrics.replans.labels(change=reason.change.value).inc()
        for why in reason.lost.values():
            self.metrics.departures.labels(why=why.value).inc()
        if reason.change is PlanChange.REPAIRED:
            self.metrics.steps_aborted.inc()
        self.metrics.plan_version.set(plan.version)
        self._plans.debug("plan %d recorded", plan.version, extra={"fields": {
            "version": plan.version, "start_step": plan.start_step, "grid": plan.grid, "standby": plan.standby,
            "reason": to_builtins(reason)}})

    def on_step(self, entry: dict[str, Any]) -> None:
        self.metrics.steps_committed.inc()
        self.metrics.step_seconds.observe(entry["seconds"])
        self.metrics.tokens_per_s.set(entry["tokens_per_s"])
        self.metrics.loss.set(math.nan if entry["loss"] is None else entry["loss"])
        self.metrics.step.set(entry["step"])
        self._commit_clock = time.monotonic()

    def on_observe(self, plan: PlanRecord, records: dict[str, PeerRecord]) -> None:
        counts = {(name, reason): n for name, r in records.items() for reason, n in r.rejected.items()}
        counts |= {(name, "stale"): r.dropped_stale for name, r in records.items()}
        counts |= self._own_rejections()
        self._note_rejections(counts)

    def on_event(self, entry: dict[str, Any]) -> None:
        if entry.get("event") == "rollback":
            self.metrics.rollbacks.inc()

    def on_checkpoint(self, path: str) -> None:
        seconds = time.monotonic() - self._commit_clock
        nbytes = sum(file.stat().st_size for file in Path(path).glob("stage-*.bin"))
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_bytes.inc(nbytes)
        self.metrics.checkpoint_seconds.inc(seconds)
        self._transfers.info("checkpoint %s: %d bytes of stage state fetched and written in %.2f s", path, nbytes,
                             seconds, extra={"fields": {"path": path, "bytes": nbytes, "seconds": seconds}})

    # ---- the dashboard's data (HTTP threads) -----------------------------------------------

    def status(self) -> dict[str, Any]:
        """`swarm status --json` as the coordinator sees it (at most STATUS_TTL_S old)."""
        with self._lock:
            if self._status is not None and time.monotonic() - self._status_at < STATUS_TTL_S:
                return self._status
        from peers.daemon.records import CoordinatorPin
        from swarm.cli.status import collect

        dht = self.coordinator.dht
        status = collect(dht, CoordinatorPin(dht.owner))
        with self._lock:
            self._status, self._status_at = status, time.monotonic()
        return status

    def history(self, limit: int | None = None) -> dict[str, Any]:
        """The per-step series (the last `limit` steps), every plan and why, traffic per channel."""
        report = self.report
        steps = list(report.steps)
        if limit is not None:
            steps = steps[-limit:] if limit > 0 else []
        channels = {}
        for channel, nbytes in dict(report.bytes).items():
            values = report.values.get(channel, 0)
            bits = 8 * nbytes / values if values else None
            channels[channel] = {"bytes": nbytes, "values": values, "bits_per_value": bits,
                                 "compression_ratio": FP32_BITS / bits if bits else None}
        training = self.coordinator.training
        return {"steps": [{key: entry.get(key) for key in STEP_KEYS} for entry in steps],
                "plans": list(report.plans), "channels": channels, "codecs": to_builtins(self.coordinator.codecs),
                "model": training.model, "total_steps": training.steps, "events": list(report.events)[-50:]}

    def exposition(self) -> tuple[bytes, str]:
        return self.metrics.exposition()

    def view(self) -> SwarmView:
        """What /metrics reads besides its counters."""
        try:
            status: dict[str, Any] | None = self.status()
        except Exception as error:  # the DHT is starting or gone: the counters still answer
            log.debug("no status for /metrics: %s", error)
            status = None
        self._note_rejections(self._own_rejections())
        with self._lock:
            rejected = dict(self._rejected)
        return SwarmView(status=status, bytes=dict(self.report.bytes), values=dict(self.report.values),
                         rejected=rejected)

    # ---- refused frames ----------------------------------------------------------------------

    def _own_rejections(self) -> dict[tuple[str, str], int]:
        states = getattr(self.coordinator, "states", None)
        if states is None:
            return {}
        try:
            stats = states.stats()
        except Exception:  # closed while the coordinator stops
            return {}
        return {(_SELF, reason): count for reason, count in rejections(stats).items()}

    def _note_rejections(self, counts: dict[tuple[str, str], int]) -> None:
        """Keep the most each (peer, reason) counted (peers that left keep theirs); log increases."""
        rises = []
        with self._lock:
            for key, count in counts.items():
                before = self._rejected.get(key)
                if before is None or count > before:
                    self._rejected[key] = count
                if count > (before or 0):
                    rises.append((key, count - (before or 0), count))
        for (peer, reason), new, total in rises:
            self._rejects.warning("%s refused %d %s frame(s) (%d in all)", peer, new, reason, total,
                                  extra={"fields": {"peer": peer, "reason": reason, "new": new, "total": total}})
