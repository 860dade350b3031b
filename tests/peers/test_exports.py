"""`peers` lists the engine, data-plane and daemon API, and importing it loads neither zmq nor hivemind."""
import subprocess
import sys

import peers


def test_every_listed_name_resolves():
    missing = [name for name in peers.__all__ if getattr(peers, name, None) is None]
    assert not missing
    assert {"ZmqTransport", "fetch_state", "fetch_state_any", "StateTransferError", "probe", "measure_bandwidth",
            "check_reachable", "unreachable_hint", "PeerRecord", "PlanRecord", "SwarmDHT",
            "PeerDaemon"} <= set(peers.__all__)


def test_import_has_no_heavy_side_effects():
    code = ("import sys, logging, peers; "
            "print(sorted(m for m in ('zmq', 'hivemind') if m in sys.modules), logging.getLogger('hivemind').handlers)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"
