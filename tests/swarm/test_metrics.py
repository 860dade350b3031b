"""Prometheus metrics of the coordinator (`--http`, /metrics) and of a peer (`--metrics-port`).

Fast: each metrics object on its own, parsed back with prometheus-client's own parser. Live: the
/metrics pages `observed_run` (conftest.py) read from a running swarm hold plausible values.
"""
from __future__ import annotations

import math
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from peers.metrics import PeerMetrics, rejections, serve_metrics
from peers.protocol import PeerRecord
from swarm.metrics import CoordinatorMetrics, SwarmView

from .conftest import GARBAGE, STALE


def samples(text):
    """{(sample name, frozenset of labels): value} of a /metrics page."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed, metric, /, **labels):
    return parsed[(metric, frozenset(labels.items()))]


STATS = {"rejected": {"malformed": 2, "nonfinite": 1, "unauthenticated": 0, "duplicate": 0, "flood": 7},
         "dropped_stale": {"act": 3, "grad": 1}, "dropped_future": {}, "send_failed": {},
         "dropped_overflow": {"act": 5}}


def test_rejections_by_reason():
    assert rejections(STATS) == {"malformed": 2, "nonfinite": 1, "unauthenticated": 0, "duplicate": 0, "flood": 7,
                                 "stale": 4, "future": 0, "overflow": 5}


def test_peer_metrics_expose_events_and_what_the_peer_announces():
    record = PeerRecord(name="p1", address="tcp://127.0.0.1:1", device="cpu", tflops=0.5, memory_gb=1.0,
                        state="training", stage=1, bytes_sent={"backward": 100}, values_sent={"backward": 128})
    metrics = PeerMetrics(lambda: record, lambda: STATS)
    metrics.prepared(0.2, 512, 3.5)
    metrics.committed()
    metrics.state_loaded("peer", 1000, 0.5)
    metrics.heartbeat()
    parsed = samples(generate_latest(metrics.registry).decode())
    assert value(parsed, "swarm_peer_steps_prepared_total") == 1 == value(parsed, "swarm_peer_steps_committed_total")
    assert value(parsed, "swarm_peer_tokens_per_second") == pytest.approx(2560)
    assert value(parsed, "swarm_peer_loss") == 3.5 and value(parsed, "swarm_peer_step_seconds_count") == 1
    assert value(parsed, "swarm_peer_channel_bytes_total", channel="backward") == 100
    assert value(parsed, "swarm_peer_channel_values_total", channel="forward") == 0
    assert value(parsed, "swarm_peer_frames_rejected_total", reason="overflow") == 5
    assert value(parsed, "swarm_peer_state_transfer_bytes_total", source="peer") == 1000
    assert value(parsed, "swarm_peer_state_transfer_bytes_total", source="checkpoint") == 0
    assert value(parsed, "swarm_peer_info", name="p1", device="cpu", state="training") == 1
    assert 0 <= value(parsed, "swarm_peer_heartbeat_age_seconds") < 5


def test_each_peer_metrics_has_its_own_registry_and_nothing_announced_yet_is_fine():
    first, second = PeerMetrics(lambda: None, lambda: None), PeerMetrics(lambda: None, lambda: None)
    first.committed()
    parsed = samples(generate_latest(second.registry).decode())
    assert value(parsed, "swarm_peer_steps_committed_total") == 0
    assert math.isnan(value(parsed, "swarm_peer_heartbeat_age_seconds"))


def test_serve_metrics_on_a_free_port_and_a_taken_one_names_the_flag():
    metrics = PeerMetrics(lambda: None, lambda: None)
    server = serve_metrics(metrics.registry, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(server.url, timeout=10) as reply:
            assert b"swarm_peer_steps_committed_total" in reply.read()
        with pytest.raises(ValueError, match=f"--metrics-port {server.port}"):
            serve_metrics(metrics.registry, "127.0.0.1", server.port)
    finally:
        server.close()


def test_coordinator_metrics_from_a_view():
    status = {"peers": [{"name": "a", "device": "cpu", "tflops": 1.0, "heartbeat_age_s": 0.5, "state": "training"},
                        {"name": "b", "device": "cpu", "tflops": 2.0, "heartbeat_age_s": 1.5, "state": "standby"}],
              "plan": {"grid": [["a"]], "standby": ["b"]}}
    view = SwarmView(status=status, bytes={"forward": 400}, values={"forward": 1000}, rejected={("a", "stale"): 2})
    metrics = CoordinatorMetrics(lambda: view)
    metrics.replans.labels(change="first").inc()
    parsed = samples(metrics.exposition()[0].decode())
    assert value(parsed, "swarm_channel_bits_per_value", channel="forward") == pytest.approx(3.2)
    assert value(parsed, "swarm_channel_compression_ratio", channel="forward") == pytest.approx(10)
    assert value(parsed, "swarm_frames_rejected_total", peer="a", reason="stale") == 2
    assert value(parsed, "swarm_capacity_tflops", kind="total") == 3 and value(parsed, "swarm_peers_standby") == 1
    assert value(parsed, "swarm_capacity_tflops", kind="used") == 1 and value(parsed, "swarm_peers_training") == 1
    assert value(parsed, "swarm_heartbeat_age_seconds", peer="b") == 1.5
    assert value(parsed, "swarm_replans_total", change="first") == 1


# ---- the live swarm ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_coordinator_metrics_of_a_live_swarm(observed_run):
    parsed = samples(observed_run["coordinator_metrics"])
    assert value(parsed, "swarm_steps_committed_total") >= 5
    assert value(parsed, "swarm_steps_aborted_total") == 1  # p2 left mid-step
    assert value(parsed, "swarm_step_seconds_count") == value(parsed, "swarm_steps_committed_total")
    assert value(parsed, "swarm_tokens_per_second") > 0 and 0 < value(parsed, "swarm_loss") < 10
    assert value(parsed, "swarm_global_step") >= 5 and value(parsed, "swarm_plan_version") == 3
    for channel in ("forward", "backward"):
        assert value(parsed, "swarm_channel_bytes_total", channel=channel) > 0
        assert value(parsed, "swarm_channel_values_total", channel=channel) > 0
    assert value(parsed, "swarm_channel_bytes_total", channel="gradient") == 0  # one replica: no all-reduce
    assert value(parsed, "swarm_frames_rejected_total", peer="p1", reason="malformed") >= GARBAGE
    assert value(parsed, "swarm_frames_rejected_total", peer="p1", reason="stale") >= STALE
    assert value(parsed, "swarm_replans_total", change="first") == 1
    assert value(parsed, "swarm_replans_total", change="joined") == 1
    assert value(parsed, "swarm_replans_total", change="repaired") == 1
    assert value(parsed, "swarm_departures_total", why="left") == 1 and value(parsed, "swarm_rollbacks_total") == 1
    for peer in ("p1", "p3"):
        assert 0 <= value(parsed, "swarm_heartbeat_age_seconds", peer=peer) < 15
    assert value(parsed, "swarm_peers", state="training") == 2 and value(parsed, "swarm_peers_standby") == 0
    assert value(parsed, "swarm_capacity_tflops", kind="total") >= value(parsed, "swarm_capacity_tflops", kind="used")
    assert value(parsed, "swarm_capacity_tflops", kind="used") > 0
    assert value(parsed, "swarm_checkpoints_total") >= 1
    assert value(parsed, "swarm_state_transfer_bytes_total") > 0
    assert value(parsed, "swarm_state_transfer_seconds_total") > 0


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_peer_metrics_of_a_live_swarm(observed_run):
    parsed = samples(observed_run["peer_metrics"])
    committed = value(parsed, "swarm_peer_steps_committed_total")
    assert committed >= 5 and value(parsed, "swarm_peer_steps_prepared_total") >= committed
    assert value(parsed, "swarm_peer_step_seconds_count") >= committed
    assert value(parsed, "swarm_peer_tokens_per_second") > 0
    assert value(parsed, "swarm_peer_info", name="p1", device="cpu", state="training") == 1
    stage = value(parsed, "swarm_peer_stage")
    sent = "forward" if stage == 0 else "backward"  # a first stage sends activations, a last one gradients
    assert value(parsed, "swarm_peer_channel_bytes_total", channel=sent) > 0
    assert value(parsed, "swarm_peer_channel_values_total", channel=sent) > 0
    if stage == 1:
        assert 0 < value(parsed, "swarm_peer_loss") < 10
    assert value(parsed, "swarm_peer_frames_rejected_total", reason="malformed") >= GARBAGE
    assert value(parsed, "swarm_peer_frames_rejected_total", reason="stale") >= STALE
    assert value(parsed, "swarm_peer_replans_total", change="first") == 1
    assert value(parsed, "swarm_peer_replans_total", change="joined") == 1
    assert value(parsed, "swarm_peer_replans_total", change="repaired") == 1
    assert 0 <= value(parsed, "swarm_peer_heartbeat_age_seconds") < 15
    # The repaired plan rolled back: p1 reloaded its stage from the coordinator's checkpoint.
    assert value(parsed, "swarm_peer_state_transfer_bytes_total", source="checkpoint") > 100_000
    assert value(parsed, "swarm_peer_state_transfer_seconds_total", source="checkpoint") > 0
    assert value(parsed, "swarm_peer_state_transfer_bytes_total", source="peer") == 0


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_training_thread_sends_no_dht_request_while_it_trains(observed_run):
    """Steps commit, plans change (a standby joins, a peer leaves, a rollback) and the training thread
    (MainThread) of p1 sends the DHT nothing: the step channel and the heartbeat thread carry it all,
    the heartbeat thread at its own pace (heartbeats, new states), not once or twice a step."""
    early_step, early_text = observed_run["peer_metrics_at_step"]
    early, late = samples(early_text), samples(observed_run["peer_metrics"])
    steps = value(late, "swarm_peer_steps_committed_total") - value(early, "swarm_peer_steps_committed_total")
    assert early_step >= 3 and steps >= 8
    assert value(late, "swarm_peer_replans_total", change="repaired") == 1  # plans changed in between
    training = "swarm_peer_dht_requests_total"
    assert value(late, training, thread="MainThread") == value(early, training, thread="MainThread")
    heartbeat = value(late, training, thread="heartbeat") - value(early, training, thread="heartbeat")
    assert 0 < heartbeat < steps / 2, (heartbeat, steps)
