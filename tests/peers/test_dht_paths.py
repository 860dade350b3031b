"""Requests on one `SwarmDHT` from several threads: a slow read never delays a heartbeat.

The lock covers only handing a request to hivemind's process; each request then waits for its
own answer, under its own deadline, so a get stuck on an unresponsive node cannot push a peer's
heartbeat store past its record's TTL (a live peer would look dead).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from peers.daemon.timeouts import HEARTBEAT_S, PEER_TTL_S
from peers.dht import GET_TIMEOUT_S, STORE_TIMEOUT_S, SwarmDHT

PROMPT_S = PEER_TTL_S / 4  # what "promptly" means here: far inside a record's life, on a loaded machine


def test_the_deadlines_leave_a_heartbeat_time_before_its_record_expires():
    assert GET_TIMEOUT_S + HEARTBEAT_S < PEER_TTL_S  # the heartbeat loop reads the control record too
    assert STORE_TIMEOUT_S <= PEER_TTL_S / 2


def test_a_store_completes_while_another_threads_get_hangs(nodes, monkeypatch):
    first, second = nodes
    submitted = threading.Event()
    real_get = first._dht.get

    def hanging_get(key: str, **kwargs: Any) -> Any:
        if key != "stuck":
            return real_get(key, **kwargs)
        submitted.set()
        return Future()  # hivemind never answers: a lookup stuck on a node that does not reply

    monkeypatch.setattr(first._dht, "get", hanging_get)
    stuck_timeout = PROMPT_S + 3.0
    outcome: dict[str, Any] = {}

    def read_stuck() -> None:
        started = time.monotonic()
        outcome["value"] = first.get("stuck", timeout=stuck_timeout)
        outcome["seconds"] = time.monotonic() - started

    reader = threading.Thread(target=read_stuck)
    reader.start()
    assert submitted.wait(5.0)
    started = time.monotonic()
    stored = first.store("heartbeat", "beat 1", ttl=30)
    took = time.monotonic() - started
    still_waiting = reader.is_alive()
    assert stored is True and took < PROMPT_S, f"the store took {took:.2f} s"
    assert still_waiting, "the get should still be waiting when the store returned"
    assert first.get("heartbeat") == "beat 1"  # another get is not held up either
    reader.join(stuck_timeout + 5.0)
    assert outcome["value"] is None  # gave up at its own deadline, no exception
    assert stuck_timeout - 0.5 <= outcome["seconds"] < stuck_timeout + 3.0


def test_concurrent_gets_and_stores_on_one_node_all_answer(nodes):
    first, second = nodes
    for i in range(8):
        assert second.store(f"shared-{i}", i, ttl=30)

    def beat(n: int) -> float:
        started = time.monotonic()
        assert first.store("beats", n, ttl=30, subkey=f"beat-{n}")
        return time.monotonic() - started

    with ThreadPoolExecutor(12) as pool:
        reads = [pool.submit(first.get, f"shared-{i % 8}") for i in range(24)]
        beats = [pool.submit(beat, n) for n in range(4)]
        values = [read.result(30) for read in reads]
        seconds = [b.result(30) for b in beats]
    assert values == [i % 8 for i in range(24)]
    assert max(seconds) < PROMPT_S, seconds
    assert second.get("beats") == {f"beat-{n}": n for n in range(4)}


def test_a_closed_node_answers_every_thread_without_raising():
    node = SwarmDHT()
    node.close()
    assert node.store("after-close", 1, ttl=5) is False
    assert node.get("after-close") is None
