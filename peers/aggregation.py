"""Aggregation rules of the all-reduce: R replicas' shares of one chunk in, one vector out.

The owner of a chunk stacks the R shares it received (its own included) into a [R, n] tensor, in
group order, and applies the plan's rule (`--aggregate`, carried in `TrainingSpec.aggregate`):

    result = aggregate("centered-clip", torch.stack(shares))   # -> Aggregate(value, outliers)
    value = result.value                                       # [n], what the owner broadcasts
    result.outliers                                            # rows to name as suspects

- `mean`: the plain average (summed in row order, so it is what the all-reduce always did). One
  hostile share moves it arbitrarily far.
- `clip`: every share's L2 norm clipped to tau (default: the lower median of the share norms),
  then the mean. Bounds how far one share can pull the step, not where it points.
- `trimmed-mean`: coordinate-wise, drop the b largest and b smallest values, b = (R-1)//2, and
  average the rest: the coordinate-wise median for odd R, the mean of the middle two for even R.
- `centered-clip` (Karimireddy, He & Jaggi, ICML 2021): start at the coordinate-wise median and
  iterate v += mean_i clip(x_i - v, tau) a few times, tau the median distance of the shares to
  the start. Tolerates up to a minority of bad shares, and moves nothing when all agree.

Why these four: they are the standard robust aggregators that need no extra round trip, run in
O(R n log R) on the owner, and stay deterministic (fixed row order, no randomness), so every
replica decodes the same broadcast bytes. The rules take only finite shares: the all-reduce drops
(robust rules) or rejects (`mean`) non-finite ones before calling them.

Every rule also judges: `outliers` are the rows whose distance to the coordinate-wise median is
more than `OUTLIER_FACTOR` times the median distance (the same test for every rule, `mean`
included, so a bad sender is named even when nothing protects the step).

Few replicas (R <= 2), gracefully: with one share every rule returns it. With two, nothing can
say which one is wrong: `trimmed-mean` and `centered-clip` are the mean, `clip` clips both to
the smaller norm (the step is at most as long as the shorter share), and nobody is flagged.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .protocol.training import AGGREGATES

__all__ = ["AGGREGATES", "Aggregate", "aggregate", "check_rule", "mean", "clip", "trimmed_mean", "centered_clip",
           "outliers", "OUTLIER_FACTOR", "CENTERED_CLIP_ITERATIONS"]

# A share this many times farther from the coordinate-wise median than the median share is flagged.
# Honest shares of small batches are heavy-tailed (in a 1 x 3 `tiny` run about 7% of owner-steps
# flag an honest replica at 10x, 17% at 4x), while a hostile one is flagged at nearly every step:
# one flag is weak evidence, a sender flagged at most steps is the one to evict.
OUTLIER_FACTOR = 10.0
# Iterations of centered clipping: the paper finds 1-3 enough once started at a robust point.
CENTERED_CLIP_ITERATIONS = 3


class Aggregate(NamedTuple):
    """A rule's result: the aggregated vector [n] and the rows (share indices) it judged outliers."""

    value: torch.Tensor
    outliers: tuple[int, ...]


def check_rule(rule: str) -> str:
    """`rule` if it is one of AGGREGATES, else ValueError naming the accepted ones."""
    if rule not in AGGREGATES:
        raise ValueError(f"unknown aggregation rule {rule!r}; choose one of {', '.join(AGGREGATES)}")
    return rule


def aggregate(rule: str, shares: torch.Tensor, *, tau: float | None = None) -> Aggregate:
    """Apply `rule` (one of AGGREGATES) to finite `shares` [R, n]; `tau` overrides the clip radius."""
    check_rule(rule)
    if shares.ndim != 2 or shares.shape[0] == 0:
        raise ValueError(f"aggregate expects a [R, n] stack of R >= 1 shares, got shape {tuple(shares.shape)}")
    shares = shares.float()
    if rule == "mean":
        value = mean(shares)
    elif rule == "clip":
        value = clip(shares, tau)
    elif rule == "trimmed-mean":
        value = trimmed_mean(shares)
    else:
        value = centered_clip(shares, tau)
    return Aggregate(value, outliers(shares))


def mean(shares: torch.Tensor) -> torch.Tensor:
    """The average of the rows, summed in row order (bit-stable for a given order)."""
    total = torch.zeros_like(shares[0])
    for row in shares:
        total += row
    return total / shares.shape[0]


def clip(shares: torch.Tensor, tau: float | None = None) -> torch.Tensor:
    """Mean of the rows after clipping each row's L2 norm to `tau` (default: lower median norm)."""
    norms = shares.norm(dim=1)
    radius = float(norms.median()) if tau is None else tau  # torch's median is the lower one
    return mean(_clip_rows(shares, norms, radius))


def trimmed_mean(shares: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise mean after dropping the (R-1)//2 largest and smallest values of each coordinate."""
    count = shares.shape[0]
    trim = (count - 1) // 2
    if trim == 0:
        return mean(shares)
    ordered = shares.sort(dim=0).values
    return mean(ordered[trim:count - trim])


def centered_clip(shares: torch.Tensor, tau: float | None = None,
                  iterations: int = CENTERED_CLIP_ITERATIONS) -> torch.Tensor:
    """Centered clipping from the coordinate-wise median; tau defaults to the median distance to it."""
    center = coordinate_median(shares)
    radius = float((shares - center).norm(dim=1).median()) if tau is None else tau
    for _ in range(iterations):
        offsets = shares - center
        center = center + mean(_clip_rows(offsets, offsets.norm(dim=1), radius))
    return center


def coordinate_median(shares: torch.Tensor) -> torch.Tensor:
    """The coordinate-wise median; for an even count the mean of the middle two values."""
    count = shares.shape[0]
    if count % 2:
        return shares.median(dim=0).values
    ordered = shares.sort(dim=0).values
    return (ordered[count // 2 - 1] + ordered[count // 2]) / 2


def outliers(shares: torch.Tensor, factor: float = OUTLIER_FACTOR) -> tuple[int, ...]:
    """Rows farther than `factor` x the median distance from the coordinate-wise median.

    Needs three rows: with two, each is exactly as far from their median as the other.
    """
    if shares.shape[0] < 3:
        return ()
    distances = (shares - coordinate_median(shares)).norm(dim=1)
    # A floor relative to the shares' size, so rounding noise between near-equal shares never counts.
    floor = 1e-6 * float(shares.norm(dim=1).median())
    threshold = factor * max(float(distances.median()), floor)
    return tuple(int(i) for i in (distances > threshold).nonzero().view(-1))


def _clip_rows(rows: torch.Tensor, norms: torch.Tensor, radius: float) -> torch.Tensor:
    """Each row scaled by min(1, radius / its norm) (a zero row stays zero)."""
    scale = torch.where(norms > radius, radius / norms.clamp_min(torch.finfo(norms.dtype).tiny), 1.0)
    return rows * scale[:, None]
