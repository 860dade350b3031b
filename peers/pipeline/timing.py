"""Where a step's seconds go on one worker: the waits a step can be stuck in, timed where they happen."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["StepTimes"]


@dataclass
class StepTimes:
    """Seconds one step spent waiting for the previous stage's activations (`wait_forward_s`), for the
    next stage's gradients (`wait_backward_s`) and in the data-parallel all-reduce (`allreduce_s`:
    its codec work and its waits). The rest of the step is compute, this worker's codecs included."""

    wait_forward_s: float = 0.0
    wait_backward_s: float = 0.0
    allreduce_s: float = 0.0

    @contextmanager
    def timing(self, what: str) -> Iterator[None]:
        """Add the seconds the block takes to the field `what`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, what, getattr(self, what) + time.perf_counter() - started)

    def compute_s(self, step_s: float) -> float:
        """The compute of a step that took `step_s` in all."""
        return max(0.0, step_s - self.wait_forward_s - self.wait_backward_s - self.allreduce_s)
