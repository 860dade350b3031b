"""Pipeline schedules: the order in which one stage runs forward and backward passes.

A schedule is a plain list of ops, `("F", m)` or `("B", m)` for micro-batch m. Each stage runs
its list top to bottom, blocking on the messages it needs; sends never block, so any pair of
schedules built here is deadlock-free. Both give the same gradients (accumulation is a sum over
the same micro-batches); they differ in memory and bubble:

- `gpipe`: all forwards, then all backwards. Simple; holds all M micro-batches' activations.
- `1f1b`: stage s runs S - s - 1 warm-up forwards, then alternates one forward and one backward.
  Holds at most S - s micro-batches of activations, the schedule to use on real GPUs.
"""
from __future__ import annotations

from collections.abc import Callable

__all__ = ["Op", "gpipe", "one_f_one_b", "SCHEDULES", "get_schedule"]

Op = tuple[str, int]


def gpipe(stage: int, num_stages: int, micro_batches: int) -> list[Op]:
    """All forward passes, then all backward passes, both in micro-batch order."""
    _check(stage, num_stages, micro_batches)
    return [("F", m) for m in range(micro_batches)] + [("B", m) for m in range(micro_batches)]


def one_f_one_b(stage: int, num_stages: int, micro_batches: int) -> list[Op]:
    """Warm-up forwards, then one forward / one backward in turn, then the remaining backwards."""
    _check(stage, num_stages, micro_batches)
    warmup = min(num_stages - stage - 1, micro_batches)
    ops: list[Op] = [("F", m) for m in range(warmup)]
    for m in range(micro_batches - warmup):
        ops += [("F", warmup + m), ("B", m)]
    ops += [("B", m) for m in range(micro_batches - warmup, micro_batches)]
    return ops


SCHEDULES: dict[str, Callable[[int, int, int], list[Op]]] = {"gpipe": gpipe, "1f1b": one_f_one_b}


def get_schedule(name: str) -> Callable[[int, int, int], list[Op]]:
    """The schedule called `name`; the error names the `--schedule` flag and the choices."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"--schedule: unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}") from None


def _check(stage: int, num_stages: int, micro_batches: int) -> None:
    if num_stages <= 0 or not 0 <= stage < num_stages:
        raise ValueError(f"stage {stage} out of range for {num_stages} stages")
    if micro_batches <= 0:
        raise ValueError(f"--micro-batches must be positive, got {micro_batches}")
