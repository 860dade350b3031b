"""Run test participants (replicas, stage workers) concurrently on threads, as peers would."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def run_concurrently(calls: list[Callable[[], Any]], *, timeout: float,
                     what: str) -> tuple[list[Any], list[BaseException]]:
    """Each call on its own thread; returns the results in call order (None where a call raised)
    and the errors raised. A thread still running after `timeout` fails the test: it hangs."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as error:  # noqa: BLE001 - returned to the caller
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), f"{what} hangs"
    return results, errors


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds (a counter never moved)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout:.0f} s"
        time.sleep(0.01)
