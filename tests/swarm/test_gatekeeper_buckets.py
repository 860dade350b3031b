"""The coordinator's `Gatekeeper.read` reads peer records incrementally: everything at first, then the
buckets of the names it needs fresh plus a few round-robin, with admission and forgery rules unchanged
(pure logic, on the fake DHT of tests/peers/test_peer_buckets.py)."""
from peers.daemon.records import PER_REFRESH, write_peer
from peers.daemon.timeouts import PEER_TTL_S
from peers.protocol import owner_fingerprint
from peers.protocol.records import PEER_BUCKETS
from swarm.coordinator.admission import Gatekeeper
from tests.peers.test_peer_buckets import HONEST, OTHER, FakeDHT, _record


def _gatekeeper(tmp_path) -> Gatekeeper:
    return Gatekeeper(tmp_path, None, None, frozenset(), lambda _text: None)  # an open swarm


def test_the_first_read_admits_every_peer_and_later_reads_cost_a_few_lookups(tmp_path):
    dht, gatekeeper = FakeDHT(), _gatekeeper(tmp_path)
    names = [f"p{i}" for i in range(500)]
    for name in names:
        write_peer(dht, _record(name), ttl=10)
    assert set(gatekeeper.read(dht)) == set(names)
    assert set(gatekeeper.admitted) == set(names)
    assert len(dht.asked[-1]) == PEER_BUCKETS
    members = names[:3]
    assert set(gatekeeper.read(dht, fresh=members)) == set(names)
    assert len(dht.asked[-1]) <= PER_REFRESH + len(members)


def test_a_fresh_members_expiry_shows_at_once_and_anyone_elses_within_a_sweep(tmp_path, monkeypatch):
    dht, gatekeeper = FakeDHT(), _gatekeeper(tmp_path)
    monkeypatch.setattr("peers.daemon.records.dht_time", lambda: dht.now)  # records stamped on the fake's clock
    for name in ("member", "bystander"):
        write_peer(dht, _record(name), ttl=PEER_TTL_S)
    write_peer(dht, _record("survivor"), ttl=60)
    gatekeeper.read(dht)
    dht.now = PEER_TTL_S + 1.0
    assert "member" not in gatekeeper.read(dht, fresh=["member"])
    assert gatekeeper.directory is not None
    for _ in range(gatekeeper.directory.sweep):
        peers = gatekeeper.read(dht)  # the coordinator's call as it is today
    assert set(peers) == {"survivor"}


def test_a_newcomer_is_admitted_within_a_sweep_and_a_forged_record_is_ignored(tmp_path):
    dht, gatekeeper = FakeDHT(), _gatekeeper(tmp_path)
    write_peer(dht, _record("bound"), ttl=60)
    gatekeeper.read(dht)
    assert gatekeeper.admitted["bound"].owner == owner_fingerprint(HONEST)
    write_peer(dht.as_owner(OTHER), _record("bound", state="leaving"), ttl=60)
    write_peer(dht, _record("newcomer"), ttl=60)
    assert gatekeeper.directory is not None
    for _ in range(gatekeeper.directory.sweep):
        peers = gatekeeper.read(dht, fresh=["bound"])
    assert peers["bound"].state == "ready" and "newcomer" in peers
    assert gatekeeper.forged["bound"] >= 1
