"""Peer records spread over buckets, and the incremental `PeerDirectory` that re-reads a few per call.

Pure logic: a fake DHT that keeps subkeyed values with expirations on a clock the test moves, and
can be told to fail lookups (the real DHT is in test_peer_buckets_dht.py).
"""
import hashlib
from collections import Counter

import pytest

from peers.daemon.records import FORGED, PER_REFRESH, PeerDirectory, read_claims, read_peers, write_peer
from peers.daemon.timeouts import PEER_TTL_S
from peers.protocol import PeerRecord, owner_fingerprint, peer_subkey
from peers.protocol.records import BUCKET_KEYS, PEER_BUCKETS, bucket_key, peer_bucket

HONEST, OTHER = b"[owner:honest-key]", b"[owner:other-key]"


class FakeDHT:
    """Buckets as subkey -> (wire value, expiry); `failing` keys go unanswered; `asked` logs each get_many."""

    def __init__(self, owner: bytes = HONEST) -> None:
        self.owner = owner
        self.now = 0.0
        self.values: dict[str, dict[bytes, tuple[object, float]]] = {}
        self.failing: set[str] = set()
        self.asked: list[list[str]] = []

    def store(self, key, value, ttl, subkey=None, **_):
        self.values.setdefault(key, {})[subkey] = (value, self.now + ttl)
        return True

    def get(self, key, **_):
        live = {subkey: value for subkey, (value, expiry) in self.values.get(key, {}).items() if expiry > self.now}
        return live or None

    def get_many(self, keys, **_):
        self.asked.append(list(keys))
        return {key: self.get(key) for key in keys if key not in self.failing}

    def as_owner(self, owner: bytes) -> "FakeDHT":
        """The same storage, written through by another signing key."""
        other = FakeDHT(owner)
        other.values, other.failing, other.asked = self.values, self.failing, self.asked
        return other


def _record(name: str, state: str = "ready") -> PeerRecord:
    return PeerRecord(name=name, address="tcp://127.0.0.1:1", device="cpu", tflops=0.1, memory_gb=1.0, state=state)


def _buckets_read(dht: FakeDHT) -> set[int]:
    return {BUCKET_KEYS.index(key) for key in dht.asked[-1]}


def test_a_name_has_one_bucket_in_every_process():
    assert peer_bucket("p1") == int.from_bytes(hashlib.sha256(b"p1").digest()[:8], "big") % PEER_BUCKETS == 35
    assert peer_bucket("coordinator") == 17  # fixed forever: every reader and writer must agree
    assert bucket_key(35) == "swarm.peers.35" and len(set(BUCKET_KEYS)) == PEER_BUCKETS
    with pytest.raises(ValueError):
        bucket_key(PEER_BUCKETS)


@pytest.mark.parametrize("pattern", ["peer-{i}", "host{i}-{i:04x}"])
def test_ten_thousand_names_spread_evenly(pattern):
    counts = Counter(peer_bucket(pattern.format(i=i)) for i in range(10_000))
    mean = 10_000 / PEER_BUCKETS
    assert len(counts) == PEER_BUCKETS
    assert max(counts.values()) < 2 * mean and min(counts.values()) > mean / 2


def test_a_peer_writes_into_its_names_bucket_and_readers_find_it_there():
    dht = FakeDHT()
    assert write_peer(dht, _record("p1"), ttl=10)
    assert list(dht.values) == [bucket_key(peer_bucket("p1"))]
    assert read_peers(dht)["p1"].state == "ready"
    assert dht.asked[-1] == list(BUCKET_KEYS)  # one concurrent read of every bucket


def test_a_record_stored_in_another_names_bucket_is_skipped():
    dht = FakeDHT()
    wrong = bucket_key((peer_bucket("p1") + 1) % PEER_BUCKETS)
    dht.store(wrong, _record("p1").to_wire(), 10, subkey=peer_subkey("p1", HONEST))
    assert "p1" not in read_peers(dht) and "p1" not in read_claims(dht)


def test_invalid_records_in_their_own_bucket_are_skipped():
    dht = FakeDHT()
    dht.store(bucket_key(peer_bucket("broken")), {"name": "broken"}, 10, subkey=peer_subkey("broken", HONEST))
    dht.store(bucket_key(peer_bucket("alias")), _record("other").to_wire(), 10, subkey=peer_subkey("alias", HONEST))
    dht.store(bucket_key(peer_bucket("unsigned")), _record("unsigned").to_wire(), 10, subkey=b"unsigned")
    directory = PeerDirectory(dht)
    directory.refresh()
    assert read_peers(dht) == directory.peers() == {}


def test_the_first_refresh_reads_every_bucket_then_a_few_per_call():
    dht = FakeDHT()
    for i in range(300):
        write_peer(dht, _record(f"p{i}"), ttl=10)
    directory = PeerDirectory(dht)
    assert directory.refresh() == list(range(PEER_BUCKETS))
    assert set(directory.peers()) == {f"p{i}" for i in range(300)}
    assert directory.claims() == read_claims(dht)
    directory.refresh()
    assert len(dht.asked[-1]) == PER_REFRESH


def test_every_bucket_is_re_read_within_one_sweep():
    directory = PeerDirectory(FakeDHT(), per_refresh=5)
    directory.refresh()
    assert directory.sweep == 13  # ceil(64 / 5)
    for _ in range(3):  # wherever the round-robin stands
        seen: set[int] = set()
        for _ in range(directory.sweep):
            seen.update(directory.refresh())
        assert seen == set(range(PEER_BUCKETS))


@pytest.fixture
def dht(monkeypatch):
    """A fake DHT whose clock is also the one records are stamped and judged by."""
    fake = FakeDHT()
    monkeypatch.setattr("peers.daemon.records.dht_time", lambda: fake.now)
    return fake


def test_a_new_record_shows_and_an_expired_one_goes_within_a_sweep(dht):
    write_peer(dht, _record("old"), ttl=PEER_TTL_S)
    directory = PeerDirectory(dht)
    directory.refresh()
    write_peer(dht, _record("new"), ttl=30)
    dht.now = PEER_TTL_S + 1.0  # "old" expired in the DHT
    assert set(directory.peers()) == {"old"}  # nothing re-read yet
    for _ in range(directory.sweep):
        directory.refresh()
    assert set(directory.peers()) == {"new"}


def test_a_record_one_read_misses_is_kept_until_its_stamp_says_it_expired(dht):
    write_peer(dht, _record("live"), ttl=PEER_TTL_S)
    directory = PeerDirectory(dht)
    directory.refresh()
    hidden = dht.values.pop(bucket_key(peer_bucket("live")))  # a lookup that reached a node without it
    dht.now = PEER_TTL_S / 2
    directory.refresh(["live"])
    assert "live" in directory.peers()  # it cannot have expired yet: a live peer is not declared dead
    dht.values[bucket_key(peer_bucket("live"))] = hidden
    dht.now = PEER_TTL_S + 1.0
    directory.refresh(["live"])
    assert "live" not in directory.peers()


def test_the_buckets_of_the_names_asked_for_are_read_on_every_refresh(dht):
    for name in ("member", "other"):
        write_peer(dht, _record(name), ttl=5)
    directory = PeerDirectory(dht, per_refresh=1)
    directory.refresh()
    for _ in range(2 * directory.sweep):
        directory.refresh(["member"])
        assert peer_bucket("member") in _buckets_read(dht)
        assert len(dht.asked[-1]) <= 2  # its bucket, and one round-robin bucket
    write_peer(dht, _record("member", state="leaving"), ttl=5)
    directory.refresh(["member"])
    assert directory.peers()["member"].state == "leaving"  # at once, not a sweep later
    dht.now = PEER_TTL_S + 1.0
    directory.refresh(["member"])
    assert "member" not in directory.peers()


def test_a_bucket_whose_lookup_failed_keeps_its_records_and_is_read_again_next():
    dht = FakeDHT()
    write_peer(dht, _record("p1"), ttl=30)
    directory = PeerDirectory(dht, per_refresh=1)
    directory.refresh()
    key = bucket_key(peer_bucket("p1"))
    dht.failing.add(key)
    directory.refresh(["p1"])
    assert "p1" in directory.peers()  # no answer is not "no records"
    directory.refresh()
    assert peer_bucket("p1") in _buckets_read(dht)  # retried although it was not asked for
    dht.failing.clear()
    write_peer(dht, _record("p1", state="leaving"), ttl=30)
    directory.refresh()
    assert directory.peers()["p1"].state == "leaving"
    directory.refresh()
    assert len(dht.asked[-1]) == 1  # answered: no longer retried, only the round-robin bucket


def test_the_directory_keeps_the_forged_record_rules_of_read_peers():
    dht = FakeDHT()
    write_peer(dht, _record("bound"), ttl=30)
    write_peer(dht.as_owner(OTHER), _record("bound", state="leaving"), ttl=30)
    directory = PeerDirectory(dht)
    directory.refresh()
    assert "bound" not in directory.peers() and "bound" not in read_peers(dht)  # two claimants, neither bound
    owners = {"bound": owner_fingerprint(HONEST)}
    before = FORGED["bound"]
    assert directory.peers(owners)["bound"].state == "ready" == read_peers(dht, owners)["bound"].state
    assert FORGED["bound"] == before + 2  # each reader counted the forgery
