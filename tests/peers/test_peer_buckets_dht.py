"""Sharded peer records on a real hivemind DHT: ~300 records written into their buckets by one node,
read back by another through `read_peers` (every bucket at once) and through a `PeerDirectory`."""
import time
from concurrent.futures import ThreadPoolExecutor

from peers.daemon.records import PeerDirectory, read_peers, write_peer
from peers.protocol import PeerRecord
from peers.protocol.records import PEER_BUCKETS, peer_bucket

PEERS = 300


def _record(name: str, state: str = "ready") -> PeerRecord:
    return PeerRecord(name=name, address="tcp://127.0.0.1:1", device="cpu", tflops=0.1, memory_gb=1.0, state=state)


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_hundreds_of_records_across_buckets_read_back_whole_and_incrementally(nodes):
    first, second = nodes
    names = [f"volunteer-{i}" for i in range(PEERS)]
    assert len({peer_bucket(name) for name in names}) == PEER_BUCKETS
    with ThreadPoolExecutor(16) as pool:  # stores wait outside SwarmDHT's lock: many in flight at once
        assert all(pool.map(lambda name: write_peer(second, _record(name), ttl=60), names))
    assert _wait_for(lambda: set(read_peers(first)) >= set(names), 10)

    directory = PeerDirectory(first)
    assert len(directory.refresh()) == PEER_BUCKETS  # the first refresh reads every bucket
    assert set(directory.peers()) >= set(names)

    assert write_peer(second, _record("volunteer-7", state="leaving"), ttl=60)
    assert _wait_for(lambda: directory.refresh(["volunteer-7"]) and directory.peers()["volunteer-7"].state == "leaving",
                     5)
    assert write_peer(second, _record("late-joiner"), ttl=60)
    for _ in range(directory.sweep):
        directory.refresh()
    assert "late-joiner" in directory.peers()
