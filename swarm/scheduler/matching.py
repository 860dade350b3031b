"""DT-FM's pipeline arrangement: bottleneck matchings between stage groups, an open-path TSP order.

DT-FM prices a partition of the devices into stage groups, not a grid: two consecutive groups
are joined by the perfect matching that minimises the slowest pair's link cost (a bottleneck
assignment), and the groups are put in the order that minimises the sum of those bottleneck
costs along the pipeline (an open-path travelling-salesman problem over the groups).
`DtfmCost.arrange` (cost.py) turns any grid into the grid DT-FM would run for the same groups.

- `bottleneck_assignment`: exact. The answer is one of the matrix's values: the smallest
  threshold whose "cost <= threshold" bipartite graph has a perfect matching. Thresholds are
  raised from the lower bound max(max row min, max column min), keeping the matching found so
  far and extending it with Kuhn's augmenting paths.
- `open_path_order`: nearest neighbour from every start, then 2-opt segment reversals until none
  helps. Exact for S <= 3; a heuristic beyond (DT-FM also solves it heuristically). The caller
  keeps the grid's own order when that is cheaper, so arranging never makes a grid worse.
"""
from __future__ import annotations

from bisect import bisect_right
from itertools import pairwise

import numpy as np
import numpy.typing as npt

__all__ = ["bottleneck_assignment", "open_path_order"]


def bottleneck_assignment(cost: npt.ArrayLike) -> tuple[float, npt.NDArray[np.int64]]:
    """(value, perm): the perfect matching of an R x R matrix minimising its largest entry.

    `perm[a]` is the column matched to row a; `value = max_a cost[a, perm[a]]`.
    Example: bottleneck_assignment(np.array([[1, 9], [2, 3]])) == (3.0, array([0, 1])).
    """
    matrix = np.asarray(cost, dtype=np.float64)
    size = len(matrix)
    by_cost = np.argsort(matrix, axis=1, kind="stable")
    sorted_cost: list[list[float]] = np.take_along_axis(matrix, by_cost, axis=1).tolist()
    columns: list[list[int]] = by_cost.tolist()
    floor = max(max(row[0] for row in sorted_cost), float(matrix.min(axis=0).max()))
    owner = [-1] * size  # column -> row
    matched = [False] * size
    for value in sorted({v for row in sorted_cost for v in row if v >= floor}):
        neighbours = [columns[row][:bisect_right(sorted_cost[row], value)] for row in range(size)]
        for row in range(size):
            if not matched[row]:
                matched[row] = _augment(row, neighbours, owner, [False] * size)
        if all(matched):
            perm = np.empty(size, dtype=np.int64)
            perm[owner] = np.arange(size)
            return float(value), perm
    raise AssertionError("unreachable: the complete bipartite graph has a perfect matching")


def open_path_order(weight: npt.ArrayLike) -> list[int]:
    """A short open path through all S nodes of the symmetric matrix `weight` (see module doc)."""
    w: list[list[float]] = np.asarray(weight, dtype=np.float64).tolist()
    size = len(w)
    if size <= 2:
        return list(range(size))
    best, best_cost = list(range(size)), float("inf")
    for start in range(size):
        order, left = [start], set(range(size)) - {start}
        while left:
            here = order[-1]
            order.append(min(sorted(left), key=lambda k: w[here][k]))
            left.remove(order[-1])
        order = _two_opt(w, order)
        cost = sum(w[a][b] for a, b in pairwise(order))
        if cost < best_cost - 1e-12:
            best, best_cost = order, cost
    return best


def _two_opt(w: list[list[float]], order: list[int]) -> list[int]:
    """Reverse segments order[i..j] of an open path while that shortens it (ends may move too).

    Reversing replaces the edges (order[i-1], order[i]) and (order[j], order[j+1]) by
    (order[i-1], order[j]) and (order[i], order[j+1]); an edge past an end of the path is free.
    """
    size = len(order)
    improved = True
    while improved:
        improved = False
        for i in range(size - 1):
            for j in range(i + 1, size):
                before = after = 0.0
                if i > 0:
                    before += w[order[i - 1]][order[i]]
                    after += w[order[i - 1]][order[j]]
                if j < size - 1:
                    before += w[order[j]][order[j + 1]]
                    after += w[order[i]][order[j + 1]]
                if after < before - 1e-12:
                    order[i:j + 1] = order[i:j + 1][::-1]
                    improved = True
    return order


def _augment(row: int, neighbours: list[list[int]], owner: list[int], seen: list[bool]) -> bool:
    """Kuhn's step: match `row`, re-matching other rows along an augmenting path if needed."""
    for col in neighbours[row]:
        if not seen[col]:
            seen[col] = True
            if owner[col] < 0 or _augment(owner[col], neighbours, owner, seen):
                owner[col] = row
                return True
    return False
