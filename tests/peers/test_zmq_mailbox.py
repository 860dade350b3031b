"""The receive gate: plan versions, duplicates, per-sender and total budgets, alone and behind a live port."""
from __future__ import annotations

import threading
from collections import Counter

import pytest

from peers.dataplane.gate import DEFAULT_MAX_MESSAGES_PER_SENDER, GatedMailbox
from peers.dataplane.stats import MAX_KINDS, OTHER_KIND, TransportStats
from peers.dataplane.transport import Mailbox, Message, PeerTimeout
from peers.dataplane.zmq_transport import ZmqTransport
from tests.threads import wait_until


def _gate(version: int = 1, max_bytes: int = 100, **budgets):
    drops: Counter[tuple[str, str]] = Counter()
    details: list[str] = []

    def on_drop(counter: str, kind: str, detail: str = "") -> None:
        drops.update([(counter, kind)])
        if detail:
            details.append(detail)

    gate = GatedMailbox(version, max_bytes, on_drop, **budgets)
    gate.details = details  # what the refusals said, for the tests that read it
    return gate, drops


def _message(index: int, size: int, version: int = 1, step: int = 0, sender: str = "p") -> Message:
    return Message("act", step, index, bytes(size), sender=sender, plan_version=version)


def test_versions_older_dropped_next_held_until_adopted_further_ones_dropped():
    gate, drops = _gate(version=2)
    gate.deliver(_message(0, 1, version=1))
    gate.deliver(_message(1, 1, version=3))  # current + 1: held
    gate.deliver(_message(2, 1, version=4))  # current + 2: nobody may reserve the buffer that far ahead
    assert drops == {("dropped_stale", "act"): 1, ("dropped_future", "act"): 1} and gate.held() == 1
    gate.set_version(3)
    assert gate.take("p", "act", 0, 1, timeout=0).plan_version == 3
    with pytest.raises(PeerTimeout):
        gate.take("p", "act", 0, 2, timeout=0)
    gate.deliver(_message(3, 1, version=4))  # now current + 1
    assert gate.held() == 1
    gate.set_version(5)  # a jump past it: what waited for plan 4 is stale
    assert drops[("dropped_stale", "act")] == 2 and gate.held() == 0


def test_a_second_message_under_a_held_key_is_refused_the_first_wins():
    gate, drops = _gate(max_bytes=1000)
    gate.deliver(Message("ar-gather", 3, 1, b"real", sender="p1", plan_version=1))
    gate.deliver(Message("ar-gather", 3, 1, b"forged", sender="p1", plan_version=1))
    gate.deliver(Message("ar-gather", 3, 1, b"other sender", sender="p2", plan_version=1))  # another key
    gate.deliver(Message("act", 0, 0, b"next plan", sender="p1", plan_version=2))
    gate.deliver(Message("act", 0, 0, b"forged next plan", sender="p1", plan_version=2))  # held keys too
    assert drops == {("duplicate", "ar-gather"): 1, ("duplicate", "act"): 1}
    assert all("'p1'" in detail and "first one is kept" in detail for detail in gate.details)
    assert gate.take("p1", "ar-gather", 3, 1, timeout=0).payload == b"real"
    assert gate.unclaimed_bytes() == len(b"other sender")
    gate.set_version(2)
    assert gate.take("p1", "act", 0, 0, timeout=0).payload == b"next plan"
    with pytest.raises(PeerTimeout):
        gate.take("p1", "act", 0, 0, timeout=0)


def test_the_in_process_mailbox_keeps_the_first_message_under_a_key_too():
    mailbox = Mailbox()
    assert mailbox.put(Message("ar-reduce", 1, 0, b"real", sender="r1"))
    assert not mailbox.put(Message("ar-reduce", 1, 0, b"forged", sender="r1"))
    assert mailbox.take("r1", "ar-reduce", 1, 0, timeout=0).payload == b"real"
    assert mailbox.put(Message("ar-reduce", 1, 0, b"after the take", sender="r1"))  # no longer held


def test_one_sender_is_capped_in_messages_and_bytes_while_others_get_through():
    gate, drops = _gate(max_bytes=1000, max_messages_per_sender=3, max_bytes_per_sender=100)
    for index in range(5):
        gate.deliver(_message(index, 0, sender="flood"))
    assert drops == {("flood", "act"): 2}
    assert "'flood' has 3 messages" in gate.details[-1]
    gate.deliver(_message(0, 60, sender="big"))
    gate.deliver(_message(1, 60, sender="big"))  # 120 bytes in flight would pass its 100
    assert drops[("flood", "act")] == 3
    for index in range(3):  # the victim's other neighbour is untouched by either
        gate.deliver(_message(index, 30, sender="honest"))
    assert gate.take("honest", "act", 0, 2, timeout=0).payload == bytes(30)
    gate.take("flood", "act", 0, 0, timeout=0)  # a claimed message frees its sender's share
    gate.deliver(_message(7, 0, sender="flood"))
    assert gate.take("flood", "act", 0, 7, timeout=0).index == 7
    assert drops[("flood", "act")] == 3


def test_held_messages_count_against_their_senders_share():
    gate, drops = _gate(max_bytes=1000, max_messages_per_sender=2)
    gate.deliver(_message(0, 1, version=2))
    gate.deliver(_message(1, 1, version=2))
    gate.deliver(_message(2, 1, version=1))
    assert drops == {("flood", "act"): 1} and gate.held() == 2
    gate.set_version(2)  # moved into the mailbox, still in flight: the share stays taken
    gate.deliver(_message(3, 1, version=2))
    assert drops == {("flood", "act"): 2}
    gate.take("p", "act", 0, 0, timeout=0)
    gate.deliver(_message(3, 1, version=2))
    assert gate.take("p", "act", 0, 3, timeout=0).plan_version == 2


def test_byte_budget_drops_overflow_and_frees_on_take_and_on_a_new_plan():
    gate, drops = _gate(max_bytes=100, max_bytes_per_sender=1000)
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


def test_a_flooding_sender_is_throttled_while_the_victims_other_neighbour_trains_on():
    """Without the per-sender share, 10 of the flood's 100 kB messages would fill the victim's 1 MB
    and the honest neighbour's activations would be dropped as overflow."""
    with (ZmqTransport("victim", max_unclaimed_bytes=1 << 20) as victim, ZmqTransport("flood") as flood,
          ZmqTransport("honest") as honest):
        flood.connect("victim", victim.address)
        honest.connect("victim", victim.address)
        for index in range(40):
            flood.send("victim", Message("act", 0, index, bytes(100_000)))
        # 5 fit its half of the budget
        wait_until(timeout=10, predicate=lambda: victim.stats()["rejected"]["flood"] == 40 - 5)
        for index in range(4):
            honest.send("victim", Message("act", 0, index, bytes(100_000)))
        for index in range(4):
            assert victim.recv("honest", "act", 0, index, timeout=10).payload.nbytes == 100_000
        stats = victim.stats()
        assert stats["dropped_overflow"] == {} and stats["unclaimed_bytes"] == 5 * 100_000
        assert "'flood' has 5 messages" in stats["last_rejection"]
        for _ in range(DEFAULT_MAX_MESSAGES_PER_SENDER):  # a flood of empty messages is capped by count
            flood.send("victim", Message("grad", 0, 1000 + _, b""))
        wait_until(timeout=10, predicate=lambda: victim.stats()["rejected"]["flood"] == 40 - 5 + 5)
        honest.send("victim", Message("grad", 0, 0, b"still here"))
        assert bytes(victim.recv("honest", "grad", 0, 0, timeout=10).payload) == b"still here"
        victim.set_plan_version(1)  # the next plan frees what the flood left unclaimed
        flood.send("victim", Message("act", 1, 0, bytes(100_000), plan_version=1))
        assert victim.recv("flood", "act", 1, 0, timeout=10).payload.nbytes == 100_000


def test_a_duplicate_over_the_wire_is_refused_and_counted_naming_its_sender():
    with ZmqTransport("victim") as victim, ZmqTransport("p1") as sender:
        sender.connect("victim", victim.address)
        sender.send("victim", Message("ar-gather", 4, 0, b"real"))
        sender.send("victim", Message("ar-gather", 4, 0, b"replayed"))  # same key: the first one wins
        wait_until(timeout=10, predicate=lambda: victim.stats()["rejected"]["duplicate"] == 1)
        assert bytes(victim.recv("p1", "ar-gather", 4, 0, timeout=5).payload) == b"real"
        stats = victim.stats()
        assert "'p1'" in stats["last_rejection"] and stats["received"]["ar-gather"] == 2
        assert stats["rejected"] == {"malformed": 0, "nonfinite": 0, "unauthenticated": 0, "duplicate": 1,
                                     "flood": 0}
        with pytest.raises(PeerTimeout):
            victim.recv("p1", "ar-gather", 4, 0, timeout=0.2)


def test_the_engine_counts_what_it_refused_after_decoding():
    with ZmqTransport("victim") as victim:
        victim.count_rejection("nonfinite", "nonfinite message from 'p1': activations hold NaN or inf")
        stats = victim.stats()
        assert stats["rejected"]["nonfinite"] == 1 and "'p1'" in stats["last_rejection"]
        with pytest.raises(ValueError, match="unknown rejection category"):
            victim.count_rejection("boring", "x")


def test_a_flood_of_empty_messages_is_capped_by_count():
    gate, drops = _gate(max_messages=3)
    for index in range(5):  # empty payloads never touch the byte budget
        gate.deliver(_message(index, 0, sender=f"p{index}"))  # distinct senders: each within its share
    assert drops == {("dropped_overflow", "act"): 2}
    gate.deliver(_message(0, 0, sender="p0"))  # a resend of an unclaimed key is a refused duplicate
    assert drops[("dropped_overflow", "act")] == 2 and drops[("duplicate", "act")] == 1
    gate.take("p0", "act", 0, 0, timeout=0)
    gate.deliver(_message(3, 0))
    assert gate.take("p", "act", 0, 3, timeout=0).index == 3


def test_deliveries_racing_takes_and_a_plan_change_keep_the_books_exact():
    # the gate keeps no copy of what the mailbox holds, only totals updated under the mailbox's own lock:
    # senders, takers and a plan change racing each other leave nothing counted that is not there
    gate, drops = _gate(version=1, max_bytes=1 << 20, max_messages_per_sender=1 << 12)
    per_sender, senders = 200, ("p", "q", "r")

    def send(name: str) -> None:
        for index in range(per_sender):
            gate.deliver(_message(index, 1 + index % 7, sender=name))
            gate.deliver(_message(index, 3, version=2, step=1, sender=name))  # the next plan's: held

    def take(name: str) -> None:
        for index in range(per_sender // 2):
            gate.take(name, "act", 0, index, timeout=10)

    threads = [threading.Thread(target=job, args=(name,)) for name in senders for job in (send, take)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    gate.set_version(2)  # what plan 1 left unclaimed goes, plan 2's held messages come in
    assert drops == {("dropped_stale", "act"): len(senders) * per_sender // 2}
    assert gate.held() == 0 and gate.unclaimed_bytes() == 3 * len(senders) * per_sender
    for name in senders:
        for index in range(per_sender):
            gate.take(name, "act", 1, index, timeout=0)
    assert gate.unclaimed_bytes() == 0 and gate._load == {}
    with pytest.raises(PeerTimeout):
        gate.take("p", "act", 1, 0, timeout=0)


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
