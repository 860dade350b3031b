"""The coordinator's report log: one appended line per entry, folded back by `read_report` into the
account `RunReport.to_dict()` keeps, across rollbacks, torn last lines and resumes."""
from __future__ import annotations

import json

import pytest

from peers.daemon.timeouts import derive_timeouts
from peers.protocol import Codecs, PeerRecord, PlanChange, PlanReason, PlanRecord, SourceKind, StateSource, TrainingSpec
from swarm.coordinator.report import REPORT_LOG, RunReport, read_report

GRID = [["a", "b"], ["c", "d"]]
STAGE = {"a": 0, "b": 0, "c": 1, "d": 1, "e": ""}  # e: standby, no cell
TIMEOUTS = derive_timeouts(message_bytes=1e5, bandwidth_gbps=1.0, latency_ms=0.1, step_flops=1e9, tflops=0.1,
                           stages=2, micro_batches=2)


def _plan(version: int = 1, start_step: int = 1) -> PlanRecord:
    names = [n for row in GRID for n in row]
    return PlanRecord(version=version, start_step=start_step, grid=GRID, layers=[2, 2],
                      addresses=dict.fromkeys(names, "tcp://127.0.0.1:1"),
                      sources=dict.fromkeys(names, StateSource(SourceKind.KEEP)), codecs=Codecs(),
                      training=TrainingSpec(batch=8, micro_batches=2, timeouts=TIMEOUTS),
                      reason=PlanReason(PlanChange.FIRST, "test"), standby=["e"])


def _records(step: int, checksum: str = "x", odd: str = "", gone: tuple[str, ...] = ()) -> dict[str, PeerRecord]:
    """Each peer at `step` with `checksum` (`odd` disagrees), its traffic growing with the step."""
    return {n: PeerRecord(name=n, address="tcp://127.0.0.1:1", device="cpu", tflops=0.1, memory_gb=4.0, step=step,
                          param_checksum=f"{checksum}{STAGE[n]}{'!' if n == odd else ''}",
                          bytes_sent={"forward": 1000 * step, "gradient": 400 * step},
                          values_sent={"forward": 250 * step, "gradient": 100 * step})
            for n in "abcde" if n not in gone}


def _commit(report: RunReport, step: int, **records: object) -> None:
    """What the coordinator does per commit: the step, its observation, a save."""
    report.step(step, 1, {"c": 5.0 - 0.1 * step, "d": 5.1 - 0.1 * step}, 1000.0 + step, 0.5)
    report.observe(_plan(), _records(step, **records))  # type: ignore[arg-type]
    report.save()


def _plain(value: object) -> object:
    return json.loads(json.dumps(value))


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_log_folds_back_into_the_account_kept_in_memory(tmp_path):
    report = RunReport(tmp_path)  # a directory: the log is DIR/report.jsonl
    assert report.path == tmp_path / REPORT_LOG
    report.event("cannot_plan", why="not enough memory")
    report.plan(_plan())
    for step in range(1, 4):
        _commit(report, step, odd="d" if step == 2 else "")
    report.checkpoint = str(tmp_path / "step-3")
    _commit(report, 4, gone=("e",))  # the standby peer left: its traffic keeps counting
    _commit(report, 5, gone=("e",))
    live = read_report(tmp_path)  # mid-run, as LocalSwarm.report() reads it
    expected = _plain(report.to_dict())
    assert {k: v for k, v in live.items() if k != "sent_per_peer"} == \
        {k: v for k, v in expected.items() if k != "sent_per_peer"}
    assert [s["step"] for s in live["steps"]] == [1, 2, 3, 4, 5]
    assert live["steps"][-1]["bytes"]["forward"] == 4 * 5000 + 3000  # e's share kept after it left
    assert live["mismatches"] == [{"step": 2, "stage": 1, "checksums": {"c": "x1", "d": "x1!"}}]
    assert live["checkpoint"] == str(tmp_path / "step-3") and live["events"][0]["event"] == "cannot_plan"
    assert live["bits_per_value"] == {"forward": 32.0, "gradient": 32.0}
    report.close()
    assert read_report(tmp_path) == read_report(tmp_path / REPORT_LOG) == _plain(report.to_dict())
    assert sum(line["kind"] == "step" for line in _lines(report.path)) == 5


def test_a_rollback_is_a_line_and_folding_drops_the_abandoned_steps(tmp_path):
    report = RunReport(tmp_path / REPORT_LOG)
    report.plan(_plan())
    for step in range(1, 8):
        _commit(report, step)
    report.rollback(5)
    report.plan(_plan(version=2, start_step=6))
    for step in (6, 7, 8):
        _commit(report, step, checksum="after")
    report.close()
    folded = read_report(tmp_path)
    assert [s["step"] for s in folded["steps"]] == list(range(1, 9))
    assert folded["checksums"]["5"]["0"] == {"a": "x0", "b": "x0"}
    assert folded["checksums"]["6"]["0"] == {"a": "after0", "b": "after0"}  # the new timeline's only
    assert [e["abandoned_steps"] for e in folded["events"] if e["event"] == "rollback"] == [[6, 7]]
    assert [line["kind"] for line in _lines(report.path)].count("rollback") == 1
    assert folded == _plain(report.to_dict())


def test_a_torn_last_line_is_ignored_and_a_resume_cuts_it_off(tmp_path):
    report = RunReport(tmp_path)
    report.plan(_plan())
    for step in range(1, 4):
        _commit(report, step)
    report.close()
    whole = read_report(tmp_path)
    with open(report.path, "ab") as log:
        log.write(b'{"kind":"step","entry":{"step":4,"plan_vers')  # the coordinator died mid-write
    assert read_report(tmp_path) == whole
    resumed = RunReport(report.path, resume=True)
    assert _plain(resumed.to_dict()) == whole
    _commit(resumed, 4)
    resumed.close()
    assert [s["step"] for s in read_report(tmp_path)["steps"]] == [1, 2, 3, 4]
    with open(report.path, "ab") as log:
        log.write(b"garbage\n{}\n")  # a complete line that is not JSON is an error, not silently skipped
    with pytest.raises(ValueError, match=r"report.jsonl:\d+"):
        read_report(tmp_path)


def test_a_resumed_report_continues_the_same_log(tmp_path):
    report = RunReport(tmp_path)
    report.plan(_plan())
    for step in range(1, 5):
        _commit(report, step, gone=("e",) if step == 4 else ())
    report.checkpoint = str(tmp_path / "step-4")
    _commit(report, 5, gone=("e",))  # then the coordinator is killed: no close()
    before = report.path.read_bytes()
    previous = read_report(tmp_path)

    resumed = RunReport(tmp_path / REPORT_LOG, resume=True)  # as `swarm-coordinator --resume` builds it
    assert _plain(resumed.to_dict())["steps"] == previous["steps"]
    assert resumed.checkpoint == str(tmp_path / "step-4") and resumed.sent_per_peer["e"]["bytes"]["forward"] == 3000
    resumed.rollback(4)
    resumed.plan(_plan(version=2, start_step=5))
    for step in (5, 6):
        _commit(resumed, step, gone=("e",))
    resumed.close()
    assert report.path.read_bytes().startswith(before)
    folded = read_report(tmp_path)
    assert [s["step"] for s in folded["steps"]] == [1, 2, 3, 4, 5, 6]
    assert [p["version"] for p in folded["plans"]] == [1, 2]
    assert folded["bytes_per_channel"]["forward"] == 4 * 6000 + 3000  # e's share kept after it left
    assert folded == _plain(resumed.to_dict())
    fresh = RunReport(tmp_path)  # without --resume: a new run, a new log
    fresh.close()
    assert read_report(tmp_path)["steps"] == []


def test_each_commit_appends_about_one_line_and_leaves_earlier_bytes_alone(tmp_path):
    report = RunReport(tmp_path)
    report.plan(_plan())
    for step in range(1, 4):
        _commit(report, step)
    head = report.path.read_bytes()
    lines = head.count(b"\n")
    for step in range(4, 14):
        _commit(report, step)
        assert report.path.read_bytes().count(b"\n") == lines + step - 3  # flushed at each commit
    grown = report.path.read_bytes()
    assert grown.startswith(head)
    sizes = [len(line) for line in grown.splitlines()[-10:]]
    assert max(sizes) < 1.2 * min(sizes)  # a commit's line does not grow with the run
    report.close()
