"""The coordinator's loggers, one per concern, so an operator can follow (or silence) each alone.

    swarm.coordinator.plans      plans published and why; plans that cannot be made yet
    swarm.coordinator.commits    steps committed; the run finishing
    swarm.coordinator.transfers  checkpoints fetched and written, resuming from one
    swarm.coordinator.rejects    frames the peers' data ports (and the coordinator's) refused
    swarm.coordinator            everything else (start-up, the dashboard's URL, shutdown)

`log_event(text)` files one of the coordinator's event lines (`Coordinator.on_event`) under its
concern; the telemetry logs rejects and checkpoint sizes itself, with structured fields.
"""
from __future__ import annotations

import logging

__all__ = ["CONCERNS", "concern_logger", "concern_of", "log_event"]

CONCERNS = ("plans", "commits", "transfers", "rejects")

# How each of the daemon's event lines begins, and its concern.
_PREFIXES = (
    ("plan ", "plans"), ("cannot plan", "plans"), ("cannot repair", "plans"), ("cannot grow", "plans"),
    ("cannot restart", "plans"), ("step ", "commits"), ("finished ", "commits"), ("checkpoint ", "transfers"),
    ("resuming from", "transfers"),
)


def concern_logger(concern: str | None) -> logging.Logger:
    """`swarm.coordinator.CONCERN`, or `swarm.coordinator` for None."""
    if concern is not None and concern not in CONCERNS:
        raise ValueError(f"unknown concern {concern!r}; concerns are {', '.join(CONCERNS)}")
    return logging.getLogger("swarm.coordinator" + (f".{concern}" if concern else ""))


def concern_of(text: str) -> str | None:
    """The concern of one event line of the coordinator (None: general)."""
    return next((concern for prefix, concern in _PREFIXES if text.startswith(prefix)), None)


def log_event(text: str) -> None:
    """Log an event line at INFO under its concern's logger."""
    concern_logger(concern_of(text)).info(text)
