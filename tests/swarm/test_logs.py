"""One logger per concern for the coordinator's event lines (`swarm.coordinator.logs`)."""
from __future__ import annotations

import logging

import pytest

from swarm.coordinator.logs import concern_logger, concern_of, log_event


@pytest.mark.parametrize(("text", "concern"), [
    ("plan 2 from step 5: [a b | c d] -- step 5 aborted: b left", "plans"),
    ("cannot plan with the 2 peers announced yet: not enough memory; waiting for more", "plans"),
    ("cannot repair the plan yet: no standby", "plans"),
    ("cannot grow the grid: no", "plans"),
    ("step 7/30 committed (plan 1): loss 3.1000, 1200 tokens/s", "commits"),
    ("finished 30 steps; report: r; checkpoint: c", "commits"),
    ("checkpoint of step 10 written to /x/step-00000010", "transfers"),
    ("checkpoint of step 10 skipped: no replica of stage 1 served it", "transfers"),
    ("resuming from the checkpoint of step 10 (/x)", "transfers"),
    ("DHT node up; peers join with: swarm-peer join --initial-peers /ip4/...", None),
    ("dashboard at http://127.0.0.1:8080/", None),
])
def test_each_event_line_has_its_concern(text, concern):
    assert concern_of(text) == concern


def test_log_event_uses_the_concern_logger(caplog):
    with caplog.at_level(logging.INFO, logger="swarm.coordinator"):
        log_event("step 1/2 committed (plan 1): loss -, 0 tokens/s")
    assert [r.name for r in caplog.records] == ["swarm.coordinator.commits"]
    assert concern_logger(None).name == "swarm.coordinator"
    with pytest.raises(ValueError, match="unknown concern"):
        concern_logger("gossip")
