"""A link that slows down while it carries training traffic is announced at its new rate, no probe needed.

Two devices in network namespaces, the path between them shaped to 20 Mbit/s each way. One end
probes the link (1 MB), then times `act` -> `grad` exchanges of 1 MB each way from their traffic
(`peers.dataplane.meter`): the probe's reading stands. The paths are then reshaped to 5 Mbit/s
and the exchanges go on (512 KB each way): the traffic reads the new rate, and what the peer would
announce for the link is that rate, marked `from_traffic`.
"""
from __future__ import annotations

import json

import pytest

from swarm.netsim.harness import NetHarness
from swarm.netsim.processes import python_command
from swarm.scheduler import Scenario

from .netlive import needs_root, tiny_scenario
from .traffic_peer import PORT

pytestmark = [pytest.mark.slow, needs_root]

FAST_MBPS, SLOW_MBPS = 20.0, 5.0
SCENARIO = tiny_scenario("traffic", [{"id": name, "site": "lan", "tflops": 1.0, "memory_gb": 4.0} for name in "ab"],
                         {"lan": {"bandwidth_gbps": FAST_MBPS / 1e3, "latency_ms": 1.0}}, stages=1, replicas=2)


@pytest.fixture(scope="module")
def readings(tmp_path_factory):
    work = tmp_path_factory.mktemp("traffic")
    (work / "scenario.json").write_text(json.dumps(SCENARIO))
    with NetHarness(Scenario.load(work / "scenario.json"), workdir=work / "net", quotas=False,
                    say=lambda text: None) as net:
        a, b = net.node("a"), net.node("b")
        net.processes.start("b", b.netns, python_command("tests.swarm.traffic_peer", "respond", "b", b.address, "a",
                                                          f"tcp://{a.address}:{PORT}"))
        requester = net.processes.start("a", a.netns, python_command(
            "tests.swarm.traffic_peer", "request", "a", a.address, "b", f"tcp://{b.address}:{PORT}"), pipe=True)
        assert requester.stdin is not None and requester.stdout is not None

        def exchange(count: int, nbytes: int) -> dict:
            requester.stdin.write(f"{count} {nbytes}\n")
            requester.stdin.flush()
            line = requester.stdout.readline()
            assert line, net.processes.log("a") + net.processes.log("b")
            return json.loads(line)

        fast = exchange(4, 1 << 20)
        net.set_rate("a", "b", SLOW_MBPS)
        net.set_rate("b", "a", SLOW_MBPS)
        slow = exchange(4, 1 << 19)
        requester.stdin.close()
        yield fast, slow


def test_a_healthy_link_keeps_its_probed_rate(readings):
    fast, _ = readings
    assert fast["probed"] == pytest.approx(FAST_MBPS / 1e3, rel=0.25), fast
    assert fast["traffic"] >= 0.75 * FAST_MBPS / 1e3, fast  # the traffic reads it no slower than it is
    assert not fast["announced"].get("from_traffic"), fast


def test_a_link_that_slowed_down_is_announced_at_the_rate_its_traffic_shows(readings):
    _, slow = readings
    assert slow["traffic"] == pytest.approx(SLOW_MBPS / 1e3, rel=0.4), slow
    assert slow["announced"]["from_traffic"] and slow["announced"]["bandwidth_gbps"] == pytest.approx(slow["traffic"],
                                                                                                  rel=1e-3)
