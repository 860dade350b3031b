"""Local search over a grid: swaps of devices, of whole stages, and moves of single layers.

Why this beats DT-FM's genetic algorithm: the cost is a max over stages and pipelines, so most
changes leave it flat. Every move is scored by the exact cost model, but only the two stages a
swap touches have their all-reduce recomputed, so a move costs microseconds, and a flat move is
still taken when it lowers a tie-break (a smooth max over stages and pipelines), which walks the
search across plateaus towards the next real improvement. `run` stops after `patience` proposals
without progress, after `max_evals`, at `target`, or at the deadline; `kick` shakes a converged
grid for the next run (iterated local search). With no deadline hit it is deterministic.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np
import numpy.typing as npt

from swarm.scheduler.cost import CostModel, Grid, Seconds
from swarm.scheduler.workload import Layers

__all__ = ["LocalSearch", "State"]

_MOVES = ("cross", "within", "spare", "rows", "layer")

# A move's stages whose all-reduce changed (None: all of them) and its undo (None: impossible).
Move = tuple[list[int] | None, Callable[[], None] | None]


class State(NamedTuple):
    """A snapshot of a search, for `restore`."""

    grid: Grid
    layers: Layers
    spare: npt.NDArray[np.int64]
    dp: Seconds
    score: float
    soft: float


class LocalSearch:
    """Improves (grid, layers) in place under one cost model; `spare` holds unused devices."""

    def __init__(self, model: CostModel, grid: Grid, layers: Layers, spare: npt.NDArray[np.int64],
                 rng: np.random.Generator, move_layers: bool = True) -> None:
        self.model, self.rng = model, rng
        self.grid, self.layers, self.spare = grid.copy(), layers.copy(), spare.copy()
        self.dp = model.data_parallel(self.grid, self.layers)
        self.score, self.soft = model.total(self.grid, self.layers, self.dp)
        stages, replicas = grid.shape
        weights = np.array([
            0.45 if stages > 1 else 0.0,
            0.25 if stages > 1 and replicas > 1 else 0.0,
            0.25 if len(spare) else 0.0,
            0.05 if stages > 2 else 0.0,
            0.05 if move_layers and stages > 1 else 0.0,
        ])
        self.weights = weights / weights.sum() if weights.sum() else weights
        self.evals = 0

    def run(self, max_evals: int, patience: int, deadline: float = float("inf"),
            target: float | None = None) -> LocalSearch:
        """Propose moves until `patience` in a row fail, `max_evals` in all, `target` or `deadline`."""
        if not self.weights.sum():
            return self
        idle = 0
        while self.evals < max_evals and idle < patience:
            if target is not None and self.score <= target:
                break
            if self.evals % 64 == 0 and time.monotonic() > deadline:
                break
            idle = 0 if self._step() else idle + 1
        return self

    def kick(self, swaps: int) -> None:
        """Apply `swaps` random device swaps unconditionally, to leave a local optimum."""
        for _ in range(swaps):
            kind = "spare" if self.weights[2] and self.rng.random() < 0.3 else "cross"
            if kind == "cross" and not self.weights[0]:
                return
            self._move(kind)
        self.dp = self.model.data_parallel(self.grid, self.layers)
        self.score, self.soft = self.model.total(self.grid, self.layers, self.dp)

    def state(self) -> State:
        """A copy of the current grid, layers, spare devices and scores, for `restore`."""
        return State(self.grid.copy(), self.layers.copy(), self.spare.copy(), self.dp.copy(), self.score, self.soft)

    def restore(self, state: State) -> None:
        """Go back to a `state()`."""
        self.grid, self.layers, self.spare, self.dp = (state.grid.copy(), state.layers.copy(), state.spare.copy(),
                                                       state.dp.copy())
        self.score, self.soft = state.score, state.soft

    def _step(self) -> bool:
        """Propose one random move; keep it if it helps, undo it otherwise."""
        self.evals += 1
        kind = _MOVES[int(self.rng.choice(len(_MOVES), p=self.weights))]
        rows, undo = self._move(kind)
        if undo is None:
            return False
        if rows is None:
            dp = self.model.data_parallel(self.grid, self.layers)
        else:
            dp = self.dp.copy()
            if rows:
                dp[rows] = self.model.data_parallel(self.grid, self.layers, rows)
        score, soft = self.model.total(self.grid, self.layers, dp)
        better = score < self.score * (1 - 1e-12)
        level = score <= self.score * (1 + 1e-12) and soft < self.soft * (1 - 1e-12)
        if better or level:
            self.dp, self.score, self.soft = dp, score, soft
            return True
        undo()
        return False

    def _move(self, kind: str) -> Move:
        """Apply one random move of `kind`: it changes the grid or the layers (see `Move`)."""
        moves: dict[str, Callable[[], Move]] = {
            "cross": self._move_cross, "within": self._move_within, "spare": self._move_spare,
            "rows": self._move_rows, "layer": self._move_layer}
        return moves[kind]()

    def _move_cross(self) -> Move:
        stages, replicas = self.grid.shape
        s1 = int(self.rng.integers(stages))
        s2 = (s1 + 1 + int(self.rng.integers(stages - 1))) % stages
        r1, r2 = int(self.rng.integers(replicas)), int(self.rng.integers(replicas))
        self._swap(s1, r1, s2, r2)
        return [s1, s2], lambda: self._swap(s1, r1, s2, r2)

    def _move_within(self) -> Move:
        stages, replicas = self.grid.shape
        s, r1 = int(self.rng.integers(stages)), int(self.rng.integers(replicas))
        r2 = (r1 + 1 + int(self.rng.integers(replicas - 1))) % replicas
        self._swap(s, r1, s, r2)
        return [], lambda: self._swap(s, r1, s, r2)

    def _move_spare(self) -> Move:
        stages, replicas = self.grid.shape
        s, r = int(self.rng.integers(stages)), int(self.rng.integers(replicas))
        k = int(self.rng.integers(len(self.spare)))
        self._swap_spare(s, r, k)
        return [s], lambda: self._swap_spare(s, r, k)

    def _move_rows(self) -> Move:
        a, b = (int(x) for x in self.rng.choice(self.grid.shape[0], size=2, replace=False))
        self._swap_rows(a, b)
        return [a, b], lambda: self._swap_rows(a, b)

    def _move_layer(self) -> Move:
        a, b = (int(x) for x in self.rng.choice(self.grid.shape[0], size=2, replace=False))
        if self.layers[a] == 1:
            return None, None
        self._shift_layer(a, b)
        return None, lambda: self._shift_layer(b, a)

    def _swap(self, s1: int, r1: int, s2: int, r2: int) -> None:
        self.grid[s1, r1], self.grid[s2, r2] = self.grid[s2, r2], self.grid[s1, r1]

    def _swap_spare(self, s: int, r: int, k: int) -> None:
        self.grid[s, r], self.spare[k] = self.spare[k], self.grid[s, r]

    def _swap_rows(self, a: int, b: int) -> None:
        self.grid[[a, b]] = self.grid[[b, a]]

    def _shift_layer(self, a: int, b: int) -> None:
        self.layers[a] -= 1
        self.layers[b] += 1
