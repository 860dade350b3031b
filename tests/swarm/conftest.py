"""`observed_run`: one live swarm watched from outside, shared by the dashboard, metrics and report tests.

A coordinator with `--http 127.0.0.1:0 --log-format json` and three peers train `tiny` as real
processes: 2 stages x 1 replica, then p3 joins as standby (plan 2), then p2 leaves (SIGTERM) and p3
takes its cell from the last checkpoint, since that stage has no other replica (plan 3, repaired,
rolled back). The fixture also fires malformed and stale frames at p1. Then, while it trains, it
reads /api/status, /api/history and both /metrics endpoints and opens the dashboard in headless
Chromium (DOM dump and a screenshot); it waits for the run to finish and hands over everything it
captured: the tests only assert, and no process outlives the fixture's set-up.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from swarm.launcher import LocalSwarm, free_port
from tests.system import ensure_command

STEPS = 400  # about 30 s at the pace of a 2 x 1 `tiny` run on 2 cores: the captures need it still running
GARBAGE, STALE = 4, 3
BROWSER_TIMEOUT_S = 150


def ensure_chromium() -> tuple[str | None, str]:
    """(path of a Chromium, "") or (None, why there is none); installs Debian's `chromium` when missing."""
    found = shutil.which("chromium-browser")
    return (found, "") if found else ensure_command("chromium", "chromium")


def headless(chromium: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on `url`, letting the page's scripts run (and fetch) for 8 s of virtual time."""
    with tempfile.TemporaryDirectory(prefix="swarm-chromium-") as profile:
        return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                               "--virtual-time-budget=8000", *extra, url],
                              capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return str(reply.read().decode())


def fire_garbage(address: str) -> None:
    """Malformed frames and well-formed frames of a stale plan version at a peer's data port."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(address)
    for i in range(GARBAGE):
        sock.send_multipart([b"\xff\x00garbage" * (i + 1)] if i % 2 else [b"\x93junk", b"payload", b"extra"])
    for i in range(STALE):
        sock.send_multipart([msgpack.packb([1, "act", 0, 10_000 + i, 0, "intruder", []]), b"\x00" * 16])
    sock.close()
    context.term()


@pytest.fixture(scope="session")
def observed_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    chromium, no_browser = ensure_chromium()
    root = tmp_path_factory.mktemp("observed")
    captured: dict[str, Any] = {"dir": root, "browser_skip": no_browser}
    metrics_port = free_port()
    with LocalSwarm(root) as swarm:
        captured["swarm"] = swarm
        swarm.start_coordinator(["--steps", str(STEPS), "--batch", "4", "--micro-batches", "2", "--stages", "2",
                                 "--replicas", "1", "--checkpoint-every", "10", "--lr", "3e-3",
                                 "--http", "127.0.0.1:0", "--log-format", "json"])
        url = captured["url"] = swarm.dashboard_url()
        swarm.start_peer("p1", ["--metrics-port", str(metrics_port), "--log-format", "json"])
        swarm.start_peer("p2")
        swarm.wait_for(lambda: swarm.committed_step() >= 3, 180, "step 3")
        captured["peer_metrics_at_step"] = swarm.committed_step(), fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        swarm.start_peer("p3")  # the grid is full: p3 becomes standby, plan version 2
        swarm.wait_for(lambda: len(swarm.report().get("plans", [])) >= 2, 120, "p3's standby plan")
        victim = next(p for p in json.loads(fetch(url + "api/status"))["peers"] if p["name"] == "p1")
        fire_garbage(victim["address"])
        fired_at = swarm.committed_step()
        swarm.wait_for(lambda: swarm.committed_step() >= max(fired_at + 3, 12), 120, "steps after the garbage")
        swarm.kill("p2", signal.SIGTERM)  # leaves gracefully: plan 3 puts p3 in its cell
        swarm.wait_for(lambda: len(swarm.report().get("plans", [])) >= 3, 120, "the repaired plan")
        repaired_from = swarm.report()["plans"][2]["start_step"]
        swarm.wait_for(lambda: swarm.committed_step() >= repaired_from + 3, 120, "steps under the repaired plan")
        captured["status"] = json.loads(fetch(url + "api/status"))
        captured["history"] = json.loads(fetch(url + "api/history"))
        captured["coordinator_metrics"] = fetch(url + "metrics")
        captured["peer_metrics"] = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        captured["asset_urls"] = {path: fetch(url + path.lstrip("/")) for path in
                                  ("/", "/static/charts.js", "/static/dashboard.js", "/static/dashboard.css")}
        if chromium is not None:
            captured["step_before_browser"] = swarm.committed_step()
            dom = headless(chromium, url, "--dump-dom")
            captured["screenshot"] = root / "dashboard.png"
            shot = headless(chromium, url, f"--screenshot={captured['screenshot']}", "--window-size=1300,1700")
            captured["step_after_browser"] = swarm.committed_step()
            captured["dom"], captured["browser_runs"] = dom.stdout, (dom, shot)
        captured["still_running"] = swarm.processes["coordinator"].poll() is None
        started = time.monotonic()
        captured["code"] = swarm.wait_exit("coordinator", 300)
        captured["finish_s"] = time.monotonic() - started
        captured["peer_codes"] = {name: swarm.wait_exit(name, 60) for name in ("p1", "p2", "p3")}
        captured["report"] = swarm.report()
        captured["logs"] = {name: swarm.log(name) for name in ("coordinator", "p1", "p2")}
    yield captured


@pytest.fixture
def observed_run_dir(observed_run: dict[str, Any]) -> Path:
    """The finished run's --checkpoint-dir (report.jsonl, checkpoints, coordinator.json)."""
    return Path(observed_run["swarm"].checkpoint_dir)
