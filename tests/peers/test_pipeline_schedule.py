"""Pipeline schedules: complete, causal, and 1F1B bounds the activations a stage holds."""
import pytest

from peers.pipeline import get_schedule, gpipe, one_f_one_b


@pytest.mark.parametrize("schedule", [gpipe, one_f_one_b])
@pytest.mark.parametrize("stages, micro", [(1, 1), (1, 4), (4, 2), (4, 8), (3, 3)])
def test_every_micro_batch_runs_forward_then_backward_once(schedule, stages, micro):
    for stage in range(stages):
        ops = schedule(stage, stages, micro)
        assert sorted(ops) == sorted([("F", m) for m in range(micro)] + [("B", m) for m in range(micro)])
        assert all(ops.index(("F", m)) < ops.index(("B", m)) for m in range(micro))


def _peak_in_flight(ops):
    live = peak = 0
    for op, _ in ops:
        live += 1 if op == "F" else -1
        peak = max(peak, live)
    return peak


def test_1f1b_holds_at_most_stages_minus_index_micro_batches():
    stages, micro = 4, 8
    for stage in range(stages):
        assert _peak_in_flight(one_f_one_b(stage, stages, micro)) == stages - stage
        assert _peak_in_flight(gpipe(stage, stages, micro)) == micro


def test_last_stage_alternates_in_1f1b():
    assert one_f_one_b(3, 4, 3) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]


def test_bad_arguments_name_the_flag():
    with pytest.raises(ValueError, match="--schedule"):
        get_schedule("zigzag")
    with pytest.raises(ValueError, match="--micro-batches"):
        gpipe(0, 2, 0)
