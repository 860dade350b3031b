"""Run test participants (replicas, stage workers) concurrently on threads, as peers would."""
from __future__ import annotations

import threading
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
