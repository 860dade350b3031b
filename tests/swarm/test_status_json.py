"""`swarm status --json` stays valid JSON when training diverges (pure logic; the live contract is
checked with real processes in test_live.py)."""
import json
import math

import pytest

from swarm.cli.status import _finite_or_none


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_is_reported_as_null(loss):
    assert _finite_or_none(loss) is None
    assert json.loads(json.dumps({"loss": _finite_or_none(loss)}, allow_nan=False)) == {"loss": None}


def test_finite_losses_and_none_pass_through():
    assert _finite_or_none(2.5) == 2.5 and _finite_or_none(None) is None
