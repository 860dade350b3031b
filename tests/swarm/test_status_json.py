"""`swarm status --json` stays valid JSON when training diverges, and the table names each peer's slowest
link as it was measured (pure logic; the live contract is checked with real processes in test_live.py)."""
import json
import math

import pytest

from swarm.cli.status import _finite_or_none, _slowest


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_is_reported_as_null(loss):
    assert _finite_or_none(loss) is None
    assert json.loads(json.dumps({"loss": _finite_or_none(loss)}, allow_nan=False)) == {"loss": None}


def test_finite_losses_and_none_pass_through():
    assert _finite_or_none(2.5) == 2.5 and _finite_or_none(None) is None


def test_the_slowest_link_says_how_it_was_measured():
    links = {"fast": {"bandwidth_gbps": 2.5, "latency_ms": 1.0},
             "slowed": {"bandwidth_gbps": 0.0051, "latency_ms": 0.3, "from_traffic": True}}
    assert _slowest(links) == "slowed 5.1 Mb/s 0.3 ms (traffic)"
    assert _slowest({"gone": {"bandwidth_gbps": 0.0017, "latency_ms": 1000.0, "at_most": True}}) == \
        "gone <= 1.7 Mb/s 1000.0 ms"
    assert _slowest({"fast": links["fast"]}) == "fast 2.50 Gb/s 1.0 ms" and _slowest({}) == "-"
