"""The all-reduce's aggregation rules on hand-computed stacks, and what one 1000x share does to each."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from peers.aggregation import AGGREGATES, aggregate, centered_clip, clip, outliers, trimmed_mean

# Three replicas' shares of a 2-value chunk; the third is far off.
SHARES = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 100.0]])


def test_mean_is_the_plain_average():
    result = aggregate("mean", SHARES)
    torch.testing.assert_close(result.value, torch.tensor([3.0, 106 / 3]))


def test_trimmed_mean_of_three_is_the_coordinate_median():
    torch.testing.assert_close(aggregate("trimmed-mean", SHARES).value, torch.tensor([3.0, 4.0]))


def test_trimmed_mean_of_four_drops_one_value_each_side():
    shares = torch.tensor([[1.0], [2.0], [4.0], [100.0]])
    torch.testing.assert_close(trimmed_mean(shares), torch.tensor([3.0]))


def test_clip_clips_each_norm_to_the_median_norm_then_averages():
    tau = 5.0  # the norms are sqrt(5), 5 and sqrt(10025)
    clipped = [5.0 * tau / math.sqrt(10025), 100.0 * tau / math.sqrt(10025)]
    expected = torch.tensor([(1 + 3 + clipped[0]) / 3, (2 + 4 + clipped[1]) / 3])
    torch.testing.assert_close(aggregate("clip", SHARES).value, expected)
    torch.testing.assert_close(clip(SHARES, tau=1e9), SHARES.mean(0))  # a radius nobody reaches: the mean


def test_centered_clip_one_iteration_by_hand():
    # Start at the coordinate median (3, 4); offsets (-2, -2), (0, 0), (2, 96); tau = median distance sqrt(8).
    tau = math.sqrt(8)
    far = [2 * tau / math.hypot(2, 96), 96 * tau / math.hypot(2, 96)]
    expected = torch.tensor([3 + (-2 + far[0]) / 3, 4 + (-2 + far[1]) / 3])
    torch.testing.assert_close(centered_clip(SHARES, iterations=1), expected)


def test_centered_clip_moves_nothing_when_all_agree():
    shares = torch.tensor([[0.5, -1.0, 2.0]]).repeat(3, 1)
    assert torch.equal(aggregate("centered-clip", shares).value, shares[0])


def test_the_far_share_is_the_outlier_under_every_rule():
    for rule in AGGREGATES:
        assert aggregate(rule, SHARES).outliers == (2,), rule
    assert outliers(torch.tensor([[1.0, 2.0], [3.0, 4.0], [2.0, 3.5]])) == ()


def test_one_share_is_returned_as_is():
    share = torch.tensor([[1.0, -2.0, 3.0]])
    for rule in AGGREGATES:
        result = aggregate(rule, share)
        assert torch.equal(result.value, share[0]) and result.outliers == ()


def test_two_shares_degrade_to_the_mean_or_the_shorter_norm():
    shares = torch.tensor([[3.0, 4.0], [300.0, 400.0]])  # norms 5 and 500
    for rule in ("mean", "trimmed-mean", "centered-clip"):
        torch.testing.assert_close(aggregate(rule, shares).value, shares.mean(0), msg=rule)
    torch.testing.assert_close(aggregate("clip", shares).value, torch.tensor([3.0, 4.0]))  # both clipped to 5
    assert all(aggregate(rule, shares).outliers == () for rule in AGGREGATES)  # two cannot outvote each other


def test_an_empty_chunk_and_bad_input():
    for rule in AGGREGATES:
        assert aggregate(rule, torch.zeros(3, 0)).value.shape == (0,)
    with pytest.raises(ValueError, match="centered-clip"):
        aggregate("median", SHARES)
    with pytest.raises(ValueError, match=r"\[R, n\]"):
        aggregate("mean", torch.zeros(3))


# How far each rule may end from the honest mean, in units of the largest honest share's norm M,
# with one of three shares replaced by anything: clip's result is no longer than the median norm
# (<= M), the coordinate median lies inside the honest values' box (<= sqrt(2) M), and centered
# clipping starts there and moves at most tau (<= 2 M) per iteration.
BOUNDS = {"clip": 2.0, "trimmed-mean": 1 + math.sqrt(2), "centered-clip": 1 + math.sqrt(2) + 3 * 2.0}


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.integers(1, 48), scale=st.floats(1e-4, 1e4),
       attacker=st.integers(0, 2), kind=st.sampled_from(["scale", "noise"]))
def test_one_outlier_of_1000x_among_three(seed, size, scale, attacker, kind):
    generator = torch.Generator().manual_seed(seed)
    honest = torch.randn(3, size, generator=generator, dtype=torch.float64) * scale
    largest = float(honest.norm(dim=1).max())
    assume(float(honest[attacker].norm()) > 0.1 * largest)  # a share near zero stays near zero scaled
    shares = honest.clone()
    if kind == "scale":
        shares[attacker] *= 1000
    else:  # a random direction, 1000x the largest honest norm
        direction = torch.randn(size, generator=generator, dtype=torch.float64)
        shares[attacker] = direction / direction.norm() * 1000 * largest
    target = honest.mean(0)
    for rule, bound in BOUNDS.items():
        result = aggregate(rule, shares.float())
        assert float((result.value.double() - target).norm()) <= bound * largest * (1 + 1e-4), rule
        if size >= 4:  # a lone coordinate can leave the honest pair's distances tiny or huge alike
            assert attacker in result.outliers, rule
    off = float((aggregate("mean", shares.float()).value.double() - target).norm())
    assert off > BOUNDS["centered-clip"] * largest  # the mean follows the outlier
