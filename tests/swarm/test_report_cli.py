"""`swarm report RUN_DIR [--out DIR]`: PNG figures and report.md, from a synthetic report (fast) and from
the directory of a real run (`observed_run`, conftest.py)."""
from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from PIL import Image

from swarm.cli.report import FIGURES, write_report
from swarm.cli.status import main
from swarm.coordinator.report import RunReport

from .conftest import STEPS


def _check_png(path, min_colors=5):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 300 and len(data) > 10_000, (path, width, height, len(data))
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) >= min_colors, (path, colors and len(colors))


def _synthetic(steps=40, with_bytes=True):
    entries = []
    for step in range(1, steps + 1):
        entry = {"step": step, "plan_version": 1 if step < 20 else 2, "loss": 5.0 / step ** 0.3,
                 "tokens_per_s": 1000.0 + 50 * (step % 7), "seconds": 0.5, "time": 1000.0 + step / 2}
        if with_bytes:
            entry["bytes"] = {"forward": 1000 * step, "backward": 2000 * step, "gradient": 3000 * step}
            entry["breakdown"] = {"a": {"step": step - 1, "compute_s": 0.25, "wait_forward_s": 0.0,
                                        "wait_backward_s": 0.1, "allreduce_s": 0.1, "commit_s": 0.05}}
        entries.append(entry)
    reason = {"change": "first", "text": "first plan", "lost": {}, "joined": ["a", "b"], "predicted_step_s": 0.4}
    repaired = {"change": "repaired", "text": "step 20 aborted: b left", "lost": {"b": "left"}, "joined": [],
                "predicted_step_s": 0.5}
    return {"steps": entries, "plans": [{"version": 1, "start_step": 1, "reason": reason},
                                        {"version": 2, "start_step": 20, "reason": repaired}],
            "bytes_per_channel": {"forward": 40_000, "backward": 80_000, "gradient": 120_000},
            "bits_per_value": {"forward": 3.125, "backward": 6.125, "gradient": 4.125}, "checkpoint": None,
            "events": [{"event": "calibrated", "plan_version": 2, "predicted_step_s": 0.5, "calibrated_step_s": 0.45}]}


def test_write_report_from_a_synthetic_report(tmp_path):
    written = write_report(_synthetic(), tmp_path / "out")
    assert [p.name for p in written] == [*FIGURES, "report.md"]
    for name in FIGURES:
        _check_png(tmp_path / "out" / name)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| v1 | 1 | first | first plan | - | 0.4 | - | 0.5 (median) |" in text
    assert "| v2 | 20 | repaired | step 20 aborted: b left | b: left | 0.5 | 0.45 | 0.5 (median) |" in text
    assert "| a | 40 | 0.25 | 0 | 0.1 | 0.1 | 0.05 |" in text  # each peer's median breakdown
    assert all(f"]({name})" in text for name in FIGURES) and "10.2x smaller" in text


def test_a_report_without_per_step_bytes_plots_the_totals(tmp_path):
    write_report(_synthetic(with_bytes=False), tmp_path)
    _check_png(tmp_path / "bytes.png")


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "cannot read" in capsys.readouterr().err
    RunReport(tmp_path).close()  # a log with no commits
    assert main(["report", str(tmp_path)]) == 2
    assert "no committed steps yet" in capsys.readouterr().err
    (tmp_path / "report.jsonl").write_text("not json\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a report" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_swarm_report_on_a_live_run_directory(observed_run, observed_run_dir, tmp_path):
    out = tmp_path / "figures"
    command = [sys.executable, "-m", "swarm.cli.status", "report", str(observed_run_dir), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / name) for name in (*FIGURES, "report.md")]
    for name in FIGURES:
        _check_png(out / name)
    text = (out / "report.md").read_text()
    assert f"| steps committed | {STEPS} (1 to {STEPS}) |" in text
    assert "| v1 | 1 | first |" in text and "| v2 |" in text and "joined" in text
    assert "| v3 |" in text and "| repaired |" in text and "| p2: left |" in text
    assert "(median) |" in text and "## Where the time went" in text
    assert all(f"]({name})" in text for name in FIGURES)
    print(f"swarm report figures: {out}")
