"""The coordinator's dashboard: the server on its own (fast), and a live swarm seen in headless Chromium.

The live checks read what `observed_run` (conftest.py) captured from a real run: the DOM Chromium
rendered from the page and its JSON API, a screenshot, the API's answers and the JSON logs. The
last test runs what `make demo` runs and reads its dashboard while it trains.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from swarm.coordinator.config import add_arguments, from_args
from swarm.coordinator.telemetry import STEP_KEYS
from swarm.dashboard.server import ASSETS, DashboardServer, json_safe

from .conftest import GARBAGE, STEPS

STATUS_KEYS = {"plan_version", "step", "total_steps", "loss", "tokens_per_s", "done", "plan", "peers", "suspects"}
PEER_KEYS = {"name", "state", "stage", "replica", "device", "tflops", "memory_gb", "heartbeat_age_s",
             "param_checksum", "step", "address", "links", "bytes_sent", "dropped_stale", "rejected", "suspects",
             "error", "breakdown"}
# An asset fetching anything from another host: src/href to a scheme, CSS imports or url() of one.
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|@import|url\(\s*["']?(?:https?:)?//""", re.I)


class FakeSource:
    def status(self):
        return {"step": 3, "loss": math.nan, "peers": []}

    def history(self, limit=None):
        return {"steps": list(range(10))[-limit:] if limit else list(range(10)), "plans": []}

    def exposition(self):
        return b"# HELP x_total y\n# TYPE x_total counter\nx_total 1.0\n", "text/plain; version=0.0.4"


@pytest.fixture
def server():
    server = DashboardServer("127.0.0.1", 0, FakeSource())
    server.start()
    yield server
    server.stop()


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.status, reply.headers["Content-Type"], reply.read()


def test_the_page_and_every_asset_come_from_the_server(server):
    for path, (_, kind) in ASSETS.items():
        code, content_type, body = _get(server.url + path.lstrip("/"))
        assert code == 200 and content_type == kind and body
        assert not EXTERNAL.search(body.decode()), f"{path} loads something from another host"
    _, _, page = _get(server.url)
    for asset in ("/static/charts.js", "/static/dashboard.js", "/static/dashboard.css"):
        assert asset.encode() in page


def test_the_api_answers_json_with_nan_as_null(server):
    _, content_type, body = _get(server.url + "api/status")
    assert content_type == "application/json" and json.loads(body) == {"step": 3, "loss": None, "peers": []}
    assert json.loads(_get(server.url + "api/history?limit=3")[2])["steps"] == [7, 8, 9]
    assert _get(server.url + "metrics")[2].startswith(b"# HELP")


@pytest.mark.parametrize(("path", "code"), [("api/history?limit=x", 400), ("nope", 404), ("../etc/passwd", 404)])
def test_bad_requests_are_refused(server, path, code):
    with pytest.raises(urllib.error.HTTPError) as error:
        _get(server.url + path)
    assert error.value.code == code


def test_only_get_and_head(server):
    request = urllib.request.Request(server.url + "api/status", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 405


def test_stop_frees_the_port_and_a_taken_port_names_the_flag(server):
    with pytest.raises(ValueError, match="--http 127.0.0.1"):
        DashboardServer("127.0.0.1", server.port, FakeSource()).start()
    port = server.port
    server.stop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_json_safe_nulls_every_non_finite_number():
    assert json_safe({"a": [1.0, math.inf, {"b": -math.inf}], "c": (math.nan,)}) == {"a": [1.0, None, {"b": None}],
                                                                                     "c": [None]}


@pytest.mark.parametrize(("flag", "expected"), [(["--http", "0.0.0.0:8080"], ("0.0.0.0", 8080)), ([], None)])
def test_http_flag(tmp_path, flag, expected):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--steps", "3", "--stages", "2", "--replicas", "1", "--checkpoint-dir", str(tmp_path),
                              *flag])
    assert from_args(args).http == expected
    args.http = "8080"
    with pytest.raises(ValueError, match="--http: expected HOST:PORT"):
        from_args(args)


# ---- the live swarm ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_run_finished_cleanly_after_being_watched(observed_run):
    assert observed_run["still_running"], "the run ended before the dashboard was captured: raise STEPS"
    assert observed_run["code"] == 0, observed_run["logs"]["coordinator"][-3000:]
    assert observed_run["peer_codes"] == {"p1": 0, "p2": 0, "p3": 0}  # p2 left on SIGTERM: a normal exit
    report = observed_run["report"]
    assert [s["step"] for s in report["steps"]] == list(range(1, STEPS + 1))  # the rollback left no duplicate
    assert [e["event"] for e in report["events"]].count("rollback") == 1 and not report["mismatches"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_chromium_renders_every_peer_the_step_and_a_loss_chart(observed_run):
    if observed_run["browser_skip"]:
        pytest.skip(observed_run["browser_skip"])
    dom, shot = observed_run["browser_runs"]
    assert dom.returncode == 0 and shot.returncode == 0, (dom.stderr[-2000:], shot.stderr[-2000:])
    html = observed_run["dom"]
    status = observed_run["status"]
    plan = status["plan"]
    shown = set(re.findall(r'<g class="cell" data-peer="([^"]+)"', html))
    assert shown == {name for row in plan["grid"] for name in row} == {"p1", "p3"}  # every grid cell, nobody else
    assert set(re.findall(r'<span class="tag joined" data-peer="([^"]+)"', html)) == set(plan["standby"])
    # every peer still in the swarm (a leaving peer's record may expire between the snapshot and the render)
    for name in (peer["name"] for peer in status["peers"] if peer["state"] != "leaving"):
        assert f'<tr data-peer="{name}">' in html
    step = int(re.search(r'<b id="step">(\d+)</b>', html).group(1))
    assert observed_run["step_before_browser"] - 5 <= step <= observed_run["step_after_browser"]
    loss_chart = re.search(r'<svg id="chart-loss"[^>]*data-points="(\d+)"', html)
    assert loss_chart and int(loss_chart.group(1)) >= 2
    assert re.search(r'<svg id="chart-loss".*?<polyline points="[^"]+" [^>]*data-series="loss"', html, re.S)
    assert 'id="plan-version">v3<' in html and "p3 joined" in html and "p2: left" in html  # changes and why
    path = observed_run["screenshot"]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1300, 1700)
    print(f"dashboard screenshot: {path}")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_api_status_is_the_swarm_status_json_contract(observed_run):
    status = observed_run["status"]
    assert set(status) == STATUS_KEYS
    assert status["plan_version"] == 3 and status["step"] >= 3 and status["tokens_per_s"] > 0
    assert {"p1", "p3"} <= {p["name"] for p in status["peers"]} <= {"p1", "p2", "p3"}  # p2: "leaving" until expiry
    for peer in status["peers"]:
        assert set(peer) == PEER_KEYS and peer["device"] == "cpu" and peer["tflops"] > 0
    assert set(status["plan"]["reason"]) >= {"change", "text", "lost", "joined", "predicted_step_s"}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_api_history_has_the_per_step_series_and_plan_changes(observed_run):
    history = observed_run["history"]
    steps = history["steps"]
    assert len(steps) >= 5 and [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    for entry in steps:
        assert set(entry) == set(STEP_KEYS) and entry["seconds"] > 0 and entry["tokens_per_s"] > 0
    assert all(isinstance(s["loss"], float) for s in steps) and {s["plan_version"] for s in steps} <= {1, 2, 3}
    plans = history["plans"]
    assert [p["reason"]["change"] for p in plans] == ["first", "joined", "repaired"]
    assert plans[1]["reason"]["joined"] == ["p3"] and plans[1]["standby"] == ["p3"]
    assert plans[2]["reason"]["lost"] == {"p2": "left"} and "p3" in plans[2]["grid"][0] + plans[2]["grid"][1]
    assert plans[2]["reason"]["rolled_back_to"] > 0 and plans[2]["reason"]["predicted_step_s"] > 0
    assert history["channels"]["forward"]["bytes"] > 0 and 3.0 < history["channels"]["forward"]["bits_per_value"] < 3.5
    assert history["channels"]["backward"]["compression_ratio"] > 4


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_assets_load_nothing_from_elsewhere_and_coordinator_json_names_the_url(observed_run, observed_run_dir):
    for path, body in observed_run["asset_urls"].items():
        assert body and not EXTERNAL.search(body), path
    assert json.loads((observed_run_dir / "coordinator.json").read_text())["dashboard"] == observed_run["url"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_json_logs_one_object_per_line_one_logger_per_concern(observed_run):
    lines = [line for line in observed_run["logs"]["coordinator"].splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    loggers = {entry["logger"] for entry in entries}
    for concern in ("plans", "commits", "transfers", "rejects"):
        assert f"swarm.coordinator.{concern}" in loggers
    rejects = [e for e in entries if e["logger"] == "swarm.coordinator.rejects"]
    assert any(e["peer"] == "p1" and e["reason"] == "malformed" and e["total"] >= GARBAGE for e in rejects)
    assert any(e["logger"] == "swarm.coordinator" and "dashboard at http://127.0.0.1:" in e["message"]
               for e in entries)
    peer = [json.loads(line) for line in observed_run["logs"]["p1"].splitlines() if line.strip()]
    assert any(e["logger"] == "peers.daemon" and "metrics at http://" in e["message"] for e in peer)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_demo_prints_the_dashboard_url_and_serves_it_while_it_runs(tmp_path):
    """`python -m swarm.demo` (what `make demo` runs): the URL comes first, the page answers during the run."""
    demo = subprocess.Popen([sys.executable, "-m", "swarm.demo", "--steps", "12", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        assert demo.stdout is not None
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("dashboard" in line for line in lines):
            lines.append(demo.stdout.readline())
        url = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", "".join(lines))
        assert url, lines
        status = None
        while time.monotonic() < deadline and demo.poll() is None:
            status = json.loads(_get(url.group(1) + "api/status")[2])
            if status["plan"] is not None and status["step"] >= 1:
                break
            time.sleep(0.5)
        assert status and {p["name"] for p in status["peers"]} == {"p1", "p2", "p3", "p4"}, status
        assert b"chart-loss-box" in _get(url.group(1))[2]
        rest, _ = demo.communicate(timeout=300)
        assert demo.returncode == 0, "".join(lines) + rest
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGTERM)
            demo.wait(60)
