"""Failure attribution and eviction back-off (pure logic; the live one-way link test is in test_live_blame)."""
from __future__ import annotations

import pytest

from peers.daemon.peer import _blamed
from peers.dataplane.transport import BadMessage, PeerTimeout
from peers.pipeline import NonFiniteStep
from peers.protocol import Departure
from swarm.coordinator.blame import MAX_BACKOFF_S, Blame, Evictions

GRID = [["a", "b"], ["c", "d"]]


def test_the_peer_named_most_is_evicted_after_k_failures_of_the_same_grid():
    blame = Blame(after=2)
    assert blame.failed(GRID, ["a"]) is None
    assert blame.failed(GRID, ["a", "c"]) == "a"
    assert blame.failed(GRID, ["a"]) is None  # counting starts over after an eviction


def test_a_commit_between_failures_clears_them():
    blame = Blame(after=2)
    assert blame.failed(GRID, ["a"]) is None
    blame.succeeded()
    assert blame.failed(GRID, ["a"]) is None
    assert blame.failed(GRID, ["a"]) == "a"


def test_failures_of_another_grid_do_not_add_up():
    blame = Blame(after=2)
    assert blame.failed(GRID, ["a"]) is None
    assert blame.failed([["a", "e"], ["c", "d"]], ["a"]) is None


def test_names_outside_the_grid_are_not_blamed_and_ties_go_by_name():
    blame = Blame(after=2)
    assert blame.failed(GRID, ["zed"]) is None
    assert blame.failed(GRID, ["zed"]) is None  # nobody in the grid was named: nobody is evicted
    assert blame.failed(GRID, ["d"]) == "d"
    assert blame.failed(GRID, ["c", "b"]) is None
    assert blame.failed(GRID, ["b", "c"]) == "b"


def test_evict_after_must_be_positive():
    with pytest.raises(ValueError, match="--evict-after"):
        Blame(after=0)


def test_an_evicted_peer_is_out_for_a_back_off_that_doubles():
    now = [100.0]
    evictions = Evictions(10.0, clock=lambda: now[0])
    assert evictions.add("a", Departure.BLAMED) == 10.0
    assert "a" in evictions and "b" not in evictions and evictions.cause("a") is Departure.BLAMED
    now[0] += 9.9
    assert "a" in evictions and evictions.released() == []
    now[0] += 0.2
    assert "a" not in evictions and evictions.released() == ["a"] and evictions.released() == []
    assert evictions.add("a", Departure.BLAMED) == 20.0
    for _ in range(10):
        evictions.add("a", Departure.BLAMED)
    assert evictions.add("a", Departure.BLAMED) == MAX_BACKOFF_S


def test_a_failure_names_the_silent_or_misbehaving_neighbour_else_the_peer_itself():
    assert _blamed(PeerTimeout("no forward", peer="a"), "me") == "a"
    assert _blamed(PeerTimeout("no answer"), "me") == "me"
    assert _blamed(BadMessage("b", "malformed", "junk"), "me") == "b"
    assert _blamed(NonFiniteStep("nan loss"), "me") == "me"
