"""The receive gate: plan versions and the unclaimed-bytes budget, alone and behind a live port."""
from __future__ import annotations

from collections import Counter

import pytest

from peers.transport import Message, PeerTimeout
from peers.zmq_mailbox import GatedMailbox
from peers.zmq_stats import MAX_KINDS, OTHER_KIND, TransportStats
from peers.zmq_transport import ZmqTransport


def _gate(version: int = 1, max_bytes: int = 100):
    drops: Counter[tuple[str, str]] = Counter()
    gate = GatedMailbox(version, max_bytes, lambda counter, kind: drops.update([(counter, kind)]))
    return gate, drops


def _message(index: int, size: int, version: int = 1, step: int = 0) -> Message:
    return Message("act", step, index, bytes(size), sender="p", plan_version=version)


def test_versions_older_dropped_newer_held_until_adopted():
    gate, drops = _gate(version=2)
    gate.deliver(_message(0, 1, version=1))
    gate.deliver(_message(1, 1, version=3))
    gate.deliver(_message(2, 1, version=4))
    assert drops == {("dropped_stale", "act"): 1} and gate.held() == 2
    gate.set_version(3)
    assert gate.take("p", "act", 0, 1, timeout=0).plan_version == 3
    assert gate.held() == 1  # version 4 still waits
    gate.set_version(5)
    assert drops[("dropped_stale", "act")] == 2 and gate.held() == 0


def test_byte_budget_drops_overflow_and_frees_on_take_and_on_a_new_plan():
    gate, drops = _gate(max_bytes=100)
    for index in range(3):
        gate.deliver(_message(index, 40))
    assert drops == {("dropped_overflow", "act"): 1} and gate.unclaimed_bytes() == 80
    with pytest.raises(PeerTimeout):
        gate.take("p", "act", 0, 2, timeout=0)
    gate.take("p", "act", 0, 0, timeout=0)
    gate.deliver(_message(2, 40, step=1))
    assert gate.unclaimed_bytes() == 80
    gate.set_version(2)  # the old plan's unclaimed messages go, and their budget with them
    assert gate.unclaimed_bytes() == 0 and drops[("dropped_stale", "act")] == 2
    gate.deliver(_message(9, 100, version=2, step=1))
    assert gate.unclaimed_bytes() == 100 and drops[("dropped_overflow", "act")] == 1


def test_a_flood_is_capped_and_the_peer_keeps_receiving():
    with ZmqTransport("victim", max_unclaimed_bytes=1 << 20) as victim, ZmqTransport("flood") as flood:
        flood.connect("victim", victim.address)
        for index in range(40):
            flood.send("victim", Message("act", 0, index, bytes(100_000)))
        flood.send("victim", Message("act", 0, 99, b"end"))
        assert bytes(victim.recv("flood", "act", 0, 99, timeout=10).payload) == b"end"
        stats = victim.stats()
        assert stats["dropped_overflow"]["act"] == 40 - 10 and stats["unclaimed_bytes"] == 10 * 100_000
        victim.set_plan_version(1)  # the next plan frees what the flood left unclaimed
        flood.set_plan_version(1)
        flood.send("victim", Message("act", 1, 0, bytes(100_000)))
        assert victim.recv("flood", "act", 1, 0, timeout=10).payload.nbytes == 100_000


def test_a_flood_of_empty_messages_is_capped_by_count():
    drops: Counter[tuple[str, str]] = Counter()
    gate = GatedMailbox(1, 100, lambda counter, kind: drops.update([(counter, kind)]), max_messages=3)
    for index in range(5):  # empty payloads never touch the byte budget
        gate.deliver(_message(index, 0))
    assert drops == {("dropped_overflow", "act"): 2}
    gate.deliver(_message(0, 0))  # a resend of an unclaimed key replaces it: no new slot needed
    assert drops[("dropped_overflow", "act")] == 2
    gate.take("p", "act", 0, 0, timeout=0)
    gate.deliver(_message(3, 0))
    assert gate.take("p", "act", 0, 3, timeout=0).index == 3


def test_a_same_key_arrival_during_take_keeps_the_byte_count_exact():
    gate, _ = _gate(max_bytes=100)
    gate.deliver(_message(0, 30))
    inner = gate._mailbox.take

    def take_then_race(*args, **kwargs):
        message = inner(*args, **kwargs)
        gate.deliver(_message(0, 20))  # the same key arrives between the pop and the bookkeeping
        return message

    gate._mailbox.take = take_then_race
    assert gate.take("p", "act", 0, 0, timeout=0).payload == bytes(30)
    assert gate.unclaimed_bytes() == 20  # the resent message is still unclaimed and counted
    gate._mailbox.take = inner
    assert gate.take("p", "act", 0, 0, timeout=0).payload == bytes(20)
    assert gate.unclaimed_bytes() == 0


def test_made_up_kinds_cannot_grow_the_counters_without_bound():
    stats = TransportStats()
    for number in range(MAX_KINDS + 50):
        stats.count_received(f"junk-{number}", 10)
    stats.count_received("act", 10)  # the swarm's own kinds keep their row
    received = stats.snapshot()["received"]
    assert len(received) == MAX_KINDS + 2 and received[OTHER_KIND] == 50 and received["act"] == 1


def test_adopting_a_plan_drops_what_the_old_plan_left_unclaimed():
    gate, drops = _gate(version=1)
    gate.deliver(_message(0, 30, version=1))  # never taken: its step was aborted
    gate.deliver(_message(1, 10, version=2))  # held for plan 2
    gate.set_version(2)
    assert drops == {("dropped_stale", "act"): 1} and gate.unclaimed_bytes() == 10
    with pytest.raises(PeerTimeout):  # the rerun under plan 2 must not get plan 1's message
        gate.take("p", "act", 0, 0, timeout=0)
    assert gate.take("p", "act", 0, 1, timeout=0).plan_version == 2
