"""The control plane on a real hivemind DHT: signed records, pinning, identity, reaping p2pd."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from peers.daemon.records import (
    COORDINATOR_NAME,
    FORGED,
    CoordinatorPin,
    publish_coordinator,
    read_peers,
    write_peer,
)
from peers.dht import SwarmDHT, peer_id_of
from peers.protocol import CONTROL_KEY, ControlRecord, PeerRecord, owner_fingerprint, peer_subkey
from peers.protocol.records import bucket_key, peer_bucket


def _record(name: str) -> PeerRecord:
    return PeerRecord(name=name, address="tcp://127.0.0.1:1", device="cpu", tflops=0.1, memory_gb=1.0,
                      state="ready")


def test_a_peer_record_is_visible_to_other_nodes_and_cannot_be_forged(nodes):
    first, second = nodes
    assert write_peer(second, _record("honest"), ttl=30)
    assert read_peers(first)["honest"].state == "ready"
    forged = _record("honest").to_wire() | {"state": "leaving"}
    assert not first.store(bucket_key(peer_bucket("honest")), forged, 30, subkey=peer_subkey("honest", second.owner))
    assert read_peers(first)["honest"].state == "ready"


def test_invalid_records_are_skipped(nodes):
    first, second = nodes
    for name, value, subkey in (("broken", {"name": "broken"}, peer_subkey("broken", second.owner)),
                                ("other-name", _record("alias").to_wire(), peer_subkey("other-name", second.owner)),
                                ("unsigned", _record("unsigned").to_wire(), b"unsigned")):
        assert second.store(bucket_key(peer_bucket(name)), value, 30, subkey=subkey) or name == "unsigned"
    peers = read_peers(first)
    assert not {"broken", "alias", "other-name", "unsigned"} & set(peers)


def test_records_expire_with_their_ttl(nodes):
    first, second = nodes
    write_peer(second, _record("brief"), ttl=3.0)  # long enough to be read back on a loaded machine
    assert "brief" in read_peers(first)
    deadline = time.monotonic() + 30
    while "brief" in read_peers(first) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "brief" not in read_peers(first)


def test_readers_pin_the_first_coordinator_they_see(nodes):
    first, second = nodes
    control = ControlRecord(plan_version=1, committed_step=4, committed_version=1, total_steps=10)
    assert publish_coordinator(first, CONTROL_KEY, control.to_wire())
    pin = CoordinatorPin()
    assert pin.control(second).committed_step == 4
    impostor = ControlRecord(plan_version=9, committed_step=99, committed_version=9, total_steps=10)
    second.store(CONTROL_KEY, impostor.to_wire(), 60, subkey=peer_subkey(COORDINATOR_NAME, second.owner))
    assert pin.control(second).committed_step == 4


def test_identity_dir_keeps_address_and_signing_key(tmp_path):
    with SwarmDHT(identity_dir=tmp_path) as node:
        address, owner = node.multiaddrs()[0].rsplit("/p2p/", 1)[1], node.owner
    with SwarmDHT(identity_dir=tmp_path) as node:
        assert node.multiaddrs()[0].rsplit("/p2p/", 1)[1] == address
        assert node.owner == owner


@pytest.mark.slow
def test_sigkilled_owner_leaves_no_dht_process_or_p2pd_behind(tmp_path):
    script = textwrap.dedent("""
        import os, sys, time
        from pathlib import Path
        from peers.dht import SwarmDHT
        node = SwarmDHT()
        print(" ".join(Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()), flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        children = [int(pid) for pid in owner.stdout.readline().split()]
        descendants = children + [int(grandchild) for pid in children for grandchild in _children(pid)]
        descendants = [pid for pid in descendants if "p2pd" in _command(pid) or "python" in _command(pid)]
        assert any("p2pd" in _command(pid) for pid in descendants)  # the DHT process and its daemon
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(pid) for pid in descendants):
            time.sleep(0.1)
        assert not [pid for pid in descendants if _alive(pid)]
    finally:
        try:
            os.killpg(owner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        owner.wait()


def _children(pid: int) -> list[str]:
    try:
        return open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return []


def _command(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie's parent, init, reaps it soon)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_coordinator_is_pinned_by_the_peer_id_of_the_initial_peer(tmp_path):
    """A node with an identity dir signs with its libp2p key: readers given its /p2p/ID follow only it."""
    with SwarmDHT(identity_dir=tmp_path) as coordinator, SwarmDHT(coordinator.multiaddrs()) as impostor:
        peer_id = coordinator.multiaddrs()[0].rsplit("/p2p/", 1)[1]
        assert peer_id_of(coordinator.owner) == peer_id
        assert peer_id_of(impostor.owner) != peer_id
        forged = ControlRecord(plan_version=9, committed_step=99, committed_version=9, total_steps=100)
        assert publish_coordinator(impostor, CONTROL_KEY, forged.to_wire())  # first: trust on first use would pick it
        real = ControlRecord(plan_version=1, committed_step=4, committed_version=1, total_steps=100)
        assert publish_coordinator(coordinator, CONTROL_KEY, real.to_wire())
        control = CoordinatorPin(peer_ids=[peer_id]).control(impostor)
        assert control is not None and control.committed_step == 4
        by_token = CoordinatorPin(fingerprint=owner_fingerprint(coordinator.owner)).control(impostor)
        assert by_token is not None and by_token.committed_step == 4


def test_a_bound_name_ignores_records_signed_by_another_key(nodes):
    first, second = nodes
    assert write_peer(first, _record("bound"), ttl=30)
    assert write_peer(second, PeerRecord.from_wire({**_record("bound").to_wire(), "state": "leaving"}), ttl=30)
    assert "bound" not in read_peers(first)  # two keys claim an unbound name: neither counts
    owners = {"bound": owner_fingerprint(first.owner)}
    before = FORGED["bound"]
    assert read_peers(second, owners)["bound"].state == "ready"
    assert FORGED["bound"] > before
