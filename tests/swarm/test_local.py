"""`swarm-sim local`: an S x R grid equals one process, compressed channels hit their bit budget,
compressed training learns, and bad input fails with the flag named."""
import json

import pytest
import torch

from peers.protocol import Codecs, TrainingSpec
from swarm.cli.sim import main
from swarm.local import LocalConfig, LocalGrid, run_local

pytestmark = pytest.mark.usefixtures("eager_codecs")


def _params(grid):
    return {name: tensor for stage in grid.stage_modules() for name, tensor in stage.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_4x2_grid_equals_one_process(schedule):
    common = dict(training=TrainingSpec(batch=4, micro_batches=2), codecs=Codecs("none", "none", "none"),
                  schedule=schedule, seq_len=64)
    single = LocalGrid(LocalConfig(stages=1, replicas=1, **common))
    grid = LocalGrid(LocalConfig(stages=4, replicas=2, **common))
    try:
        for step in (1, 2, 3):
            a, b = single.step(step)["loss"], grid.step(step)["loss"]
            assert abs(a - b) <= 1e-5 * abs(a)
        assert grid.replicas_identical()
        pa, pb = _params(single), _params(grid)
        assert pa.keys() == pb.keys()
        flat_a = torch.cat([pa[k].flatten() for k in pa])
        flat_b = torch.cat([pb[k].flatten() for k in pa])
        assert ((flat_a - flat_b).norm() / flat_a.norm()).item() <= 1e-5
        # Per tensor too, loosely: only the attention key biases (zero true gradient, so Adam
        # amplifies float noise) differ by more than 1e-5 of their norm.
        assert max(((pa[k] - pb[k]).norm() / pa[k].norm()).item() for k in pa) <= 1e-3
    finally:
        single.close()
        grid.close()


@pytest.mark.slow
def test_compressed_run_meets_bit_budget_and_learns(tmp_path):
    report_path = tmp_path / "report.json"
    code = main(["local", "--model", "tiny", "--stages", "4", "--replicas", "2", "--micro-batches", "2",
                 "--batch", "8", "--steps", "12", "--fwd", "q3", "--bwd", "q6", "--grad", "q4", "--seq-len", "64",
                 "--train-samples", "64", "--eval-samples", "32", "--eval-every", "6", "--quiet",
                 "--report", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["config"]["training"] | {"model": "tiny", "seed": 0, "batch": 8} == report["config"]["training"]
    assert report["config"]["codecs"] == {"forward": "q3", "backward": "q6", "gradient": "q4", "forward_delta": False}
    assert (report["config"]["stages"], report["config"]["replicas"]) == (4, 2)
    assert [entry["step"] for entry in report["steps"]] == list(range(1, 13))
    for entry in report["steps"]:
        assert set(entry["bytes"]) == {"forward", "backward", "gradient"} and entry["tokens_per_s"] > 0
    assert [entry["step"] for entry in report["eval"]] == [6, 12]
    bits = report["bits_per_value"]
    assert 3.0 < bits["forward"] <= 3.2 and 6.0 < bits["backward"] <= 6.2 and 4.0 < bits["gradient"] <= 4.2
    losses = [entry["loss"] for entry in report["steps"]]
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0
    assert report["eval"][-1]["loss"] < losses[0] - 1.0
    final = report["final"]
    assert final["replicas_identical"] and len(final["param_checksum"]) == 64
    assert final["train_loss"] == losses[-1] and final["eval_loss"] == report["eval"][-1]["loss"]


def test_delta_runs_repeat_exactly_and_settle_at_the_codec_width():
    config = LocalConfig(TrainingSpec(batch=4, micro_batches=1, steps=3), Codecs(forward_delta=True), stages=2,
                         replicas=2, seq_len=64, train_samples=4, eval_samples=8)
    first, second = run_local(config), run_local(config)
    assert first["final"]["param_checksum"] == second["final"]["param_checksum"]
    assert [e["loss"] for e in first["steps"]] == [e["loss"] for e in second["steps"]]
    # Step 1 sends every sample in full; once all were seen, only 3-bit deltas travel.
    assert first["bits_per_value"]["forward"] > 8
    assert first["bits_per_value_final_step"]["forward"] <= 3.2


def test_schedules_change_timing_never_numbers():
    """GPipe and 1F1B send the same frames (seeded per message) and accumulate in the same order."""
    checksums = {
        schedule: run_local(LocalConfig(TrainingSpec(batch=16, micro_batches=4, steps=2), Codecs(forward_delta=True),
                                        stages=4, replicas=2, schedule=schedule, train_samples=32, eval_samples=8,
                                        seq_len=32))["final"]["param_checksum"]
        for schedule in ("gpipe", "1f1b")}
    assert checksums["gpipe"] == checksums["1f1b"]


def test_a_failing_worker_aborts_the_step_instead_of_hanging():
    grid = LocalGrid(LocalConfig(TrainingSpec(batch=4, micro_batches=2), stages=3, replicas=2, seq_len=32))
    try:
        broken = grid.workers[1][1]

        def crash(*_args):
            raise RuntimeError("injected failure in stage 1, replica 1")

        broken.stage.forward = crash
        with pytest.raises(RuntimeError, match="injected failure"):
            grid.step(1)
    finally:
        grid.close()


@pytest.mark.parametrize("argv, flag", [
    (["--batch", "16", "--train-samples", "8"], "--train-samples"),
    (["--stages", "5"], "--stages"),
    (["--stages", "2", "--layers", "3,2"], "--layers"),
    (["--stages", "2", "--layers", "3"], "--layers"),
    (["--batch", "6", "--micro-batches", "4"], "--micro-batches"),
    (["--batch", "5", "--replicas", "2"], "--replicas"),
    (["--fwd", "q9"], "--fwd"),
    (["--bwd", "zip"], "--bwd"),
    (["--grad", "q4@0"], "--grad"),
    (["--data", "/nonexistent/corpus.txt"], "--data"),
    (["--model", "gpt5"], "--model"),
    (["--steps", "0"], "--steps"),
    (["--device", "tpu"], "--device"),
])
def test_bad_input_names_the_flag(argv, flag, capsys, tmp_path):
    assert main(["local", "--quiet", "--steps", "1", *argv]) == 2
    assert flag in capsys.readouterr().err


def test_user_data_file_trains(tmp_path, capsys):
    corpus = tmp_path / "notes.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"line {i}: the quick brown fox jumps over the lazy dog"})
                                for i in range(200)))
    report = tmp_path / "out" / "report.json"
    assert main(["local", "--data", str(corpus), "--steps", "2", "--batch", "4", "--seq-len", "32",
                 "--report", str(report)]) == 0
    assert json.loads(report.read_text())["config"]["training"]["data"] == str(corpus)
    assert "eval loss" in capsys.readouterr().err
    (tmp_path / "broken.jsonl").write_text('{"title": "no text field"}\n')
    assert main(["local", "--quiet", "--data", str(tmp_path / "broken.jsonl")]) == 2
    assert "--data" in capsys.readouterr().err


def test_device_cpu_trains_and_a_missing_gpu_is_named(capsys, monkeypatch):
    config = LocalConfig(TrainingSpec(batch=2, micro_batches=1, steps=1), stages=2, replicas=1, seq_len=16,
                         eval_samples=4, device="cpu")
    report = run_local(config)
    assert report["config"]["device"] == "cpu" and report["final"]["eval_loss"] > 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["local", "--quiet", "--steps", "1", "--device", "cuda:0"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda:0" in err and "no CUDA GPU" in err and "--device cpu" in err


def test_help_lists_the_contract_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["local", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--stages", "--replicas", "--micro-batches", "--batch", "--steps", "--fwd", "--bwd",
                 "--grad", "--fwd-delta", "--schedule", "--seed", "--data", "--report"):
        assert flag in text


def test_bf16_compute_trains_over_fp32_master_weights():
    """bf16 autocast changes the numbers a little, never the state's dtype: weights, AdamW moments
    and the all-reduce stay fp32, replicas stay bit-identical, and activations travel as bf16 frames."""
    common = dict(stages=2, replicas=2, seq_len=32, train_samples=16, eval_samples=8)
    fp32 = run_local(LocalConfig(TrainingSpec(batch=4, micro_batches=2, steps=6), Codecs("none", "none", "none"),
                                 **common))
    config = LocalConfig(TrainingSpec(batch=4, micro_batches=2, steps=6, dtype="bf16"),
                         Codecs("none", "none", "none"), **common)
    grid = LocalGrid(config)
    try:
        losses = [grid.step(step)["loss"] for step in range(1, 7)]
        assert grid.replicas_identical()
        assert {p.dtype for stage in grid.stage_modules() for p in stage.parameters()} == {torch.float32}
        moments = [s["exp_avg"] for s in grid.workers[0][0].optimizer.state.values()]
        assert moments and {m.dtype for m in moments} == {torch.float32}
    finally:
        grid.close()
    reference = [entry["loss"] for entry in fp32["steps"]]
    assert losses != reference  # bf16 really computed in bf16
    assert losses == pytest.approx(reference, rel=0.05)  # ... and trains the same model
    assert losses[-1] < losses[0]
    # "none" keeps the sender's dtype: activations go as 16-bit values, half of fp32's bytes.
    bits = run_local(config)["bits_per_value"]
    assert 16 <= bits["forward"] < 17 and 16 <= bits["backward"] < 17 and 32 <= bits["gradient"] < 33
