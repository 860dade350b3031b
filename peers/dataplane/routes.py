"""Where a coordinator's data port pushes to each peer: the connection its last verified report came on.

The coordinator's half of the step channel (`peers.step_channel`) inside its `ZmqTransport`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import zmq

from peers.dataplane.transport import Message

__all__ = ["ReportRoutes"]


class ReportRoutes:
    """The coordinator's side of the channel inside its transport: who reported on which connection.

    `received` runs on the transport's loop thread for each step_report: it hands the report on and,
    if the listener took it (a report it verified), remembers its connection (the ROUTER identity),
    so later pushes reach that peer; a forged report never re-routes anyone's pushes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, bytes] = {}
        self._on_report: Callable[[Message], bool] | None = None

    def listen(self, on_report: Callable[[Message], bool]) -> None:
        """Hand every step_report to `on_report(message)`, True when taken (on the loop thread: keep it short)."""
        self._on_report = on_report

    def received(self, identity: zmq.Frame, message: Message) -> None:
        if self._on_report is not None and self._on_report(message):
            with self._lock:
                self._routes[message.sender] = identity.bytes

    def route(self, name: str) -> bytes | None:
        """The ROUTER identity `name` last reported from, or None."""
        with self._lock:
            return self._routes.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._routes)
