"""Checkpoints taken beside the coordinator's loop, never inside it.

Fetching every stage's state from its replicas and writing it to disk takes as long as the
slowest link and disk allow; done on the loop, it froze commits, liveness checks and re-plans
meanwhile. `Checkpointer.start` hands the work to a thread and returns at once; the loop picks up
the finished checkpoint with `collect`. Peers keep serving the state of the checkpointed step
until the next checkpoint step replaces it, so the fetch may run while training goes on.
One checkpoint is taken at a time: a due step that finds one still running is skipped (said so).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from peers.protocol import PlanRecord
from peers.security import CurveKeys

from .checkpoint import Checkpoint, StageUnavailable, fetch_codec_states, fetch_stages, write_checkpoint

__all__ = ["Checkpointer", "Skipped"]


@dataclass(frozen=True)
class Skipped:
    """A due checkpoint that was not taken, and why (`stage`: the one nobody served, if that was it)."""

    step: int
    why: str
    stage: int | None = None


class Checkpointer:
    """directory: where checkpoints go; keys: the coordinator's curve keys (None in an open swarm).

    Outcomes (a `Checkpoint` written, or `Skipped`) queue up until the loop `collect`s them, so the
    loop alone touches the report and the state it serves."""

    def __init__(self, directory: Path, keys: CurveKeys | None) -> None:
        self.directory = directory
        self.keys = keys
        self._thread: threading.Thread | None = None
        self._outcomes: list[Checkpoint | Skipped] = []
        self._lock = threading.Lock()
        self._timeline = 0  # bumped by a rollback: a checkpoint of the abandoned steps must not be written

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, step: int, plan: PlanRecord, patience: float) -> None:
        """Begin the checkpoint of committed `step` under `plan`; `patience`: seconds per stage fetch."""
        if self.busy:
            self._finish(Skipped(step, "the previous checkpoint is still being written"))
            return
        self._thread = threading.Thread(target=self._take, args=(step, plan, patience, self._timeline),
                                        name=f"checkpoint-{step}", daemon=True)
        self._thread.start()

    def invalidate(self) -> None:
        """The run rolled back: a checkpoint still being fetched belongs to abandoned steps; drop it."""
        with self._lock:
            self._timeline += 1

    def collect(self) -> list[Checkpoint | Skipped]:
        """What finished since the last call, oldest first."""
        with self._lock:
            done, self._outcomes = self._outcomes, []
        return done

    def wait(self, timeout: float) -> list[Checkpoint | Skipped]:
        """Let a running checkpoint finish (the last step's, before the coordinator exits)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.collect()

    def _take(self, step: int, plan: PlanRecord, patience: float, timeline: int) -> None:
        replicas = [[(plan.addresses[n], plan.keys.get(n)) for n in row] for row in plan.grid]
        try:
            blobs = fetch_stages(replicas, step, patience, self.keys)
        except StageUnavailable as error:
            self._finish(Skipped(step, str(error), error.stage))
            return
        codec = fetch_codec_states(replicas, step, patience / 4, self.keys)
        with self._lock:  # held while writing, so a rollback either drops it or comes after it
            if timeline != self._timeline:
                return
            path = write_checkpoint(self.directory, step, plan.to_wire(), blobs, codec)
            self._outcomes.append(Checkpoint(step=step, path=path, plan=plan.to_wire(), stages=blobs, codec=codec))

    def _finish(self, outcome: Checkpoint | Skipped) -> None:
        with self._lock:
            self._outcomes.append(outcome)
