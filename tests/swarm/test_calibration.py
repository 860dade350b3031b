"""The cost model on the compute the peers achieve: speeds from step breakdowns, one report event per plan."""
from __future__ import annotations

import pytest

from models import get_config
from models.stages import forward_flops_per_token
from swarm.coordinator.calibration import CALIBRATION_STEPS, achieved_tflops, calibration, median_compute_s
from swarm.coordinator.planning import predicted_step_s
from tests.swarm.test_coordinator import CODECS, TRAINING, _plan, _records

GRID = [["a", "b"], ["c", "d"]]


def _steps(plan_version, compute_s, first, last):
    return [{"step": step, "plan_version": plan_version,
             "breakdown": {name: {"compute_s": seconds} for name, seconds in compute_s.items()}}
            for step in range(first, last + 1)]


def test_the_achieved_speed_is_a_stages_forward_and_backward_flops_over_its_compute_seconds():
    speeds = achieved_tflops({"a": 0.5, "d": 2.0}, GRID, [2, 2], TRAINING)
    tokens = TRAINING.batch // 2 * get_config(TRAINING.model).context
    assert set(speeds) == {"a", "d"}
    assert speeds["a"] == pytest.approx(4 * forward_flops_per_token(get_config("tiny"), [2, 2], 0) * tokens / 0.5e12)
    assert speeds["d"] == pytest.approx(4 * forward_flops_per_token(get_config("tiny"), [2, 2], 1) * tokens / 2e12)


def test_the_median_leaves_out_missing_and_zero_readings():
    steps = _steps(1, {"a": 0.1, "b": 0.0}, 1, 3) + [{"step": 4, "plan_version": 1,
                                                      "breakdown": {"a": {"compute_s": 0.4}}}]
    assert median_compute_s(steps, ["a", "b", "c"]) == {"a": pytest.approx(0.1)}


def test_a_plan_is_priced_once_on_achieved_compute_and_slower_compute_means_a_longer_step():
    plan, records = _plan(GRID), _records(["a", "b", "c", "d"])  # start_step 5, 0.1 TFLOPS each at join
    joined = predicted_step_s(plan, records, TRAINING, CODECS)
    slow = dict.fromkeys("abcd", 1.0)  # about 0.004 TFLOPS achieved: far below the join figure
    steps = _steps(plan.version, {"a": 99.0}, plan.start_step, plan.start_step) + _steps(
        plan.version, slow, plan.start_step + 1, plan.start_step + CALIBRATION_STEPS)
    at = plan.start_step + CALIBRATION_STEPS
    assert calibration(plan, at - 1, steps, records, TRAINING, CODECS) is None  # only at its calibration step
    event = calibration(plan, at, steps, records, TRAINING, CODECS)
    assert event is not None and event["plan_version"] == plan.version
    assert set(event["achieved_tflops"]) == set("abcd") and max(event["achieved_tflops"].values()) < 0.01
    assert joined is not None and event["calibrated_step_s"] > 10 * joined
    missing = [entry for entry in steps if entry["step"] != at]  # one member never reported a breakdown
    for entry in missing:
        entry["breakdown"].pop("d", None)
    assert calibration(plan, at, missing, records, TRAINING, CODECS) is None
