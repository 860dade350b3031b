"""A peer record is bounded: the largest valid one fits PEER_RECORD_MAX_BYTES as the DHT stores it,
anything beyond a bound is refused naming the field, and a writer's own record always fits."""
import msgspec
import pytest
from hivemind.utils.serializer import MSGPackSerializer

from peers.dataplane.transport import REJECTIONS
from peers.protocol import CHANNELS, Link, PeerRecord, RecordError
from peers.protocol.records import (
    MAX_DHT_ADDRS,
    MAX_ERROR_CHARS,
    MAX_LINKS,
    MAX_SUSPECTS,
    PEER_BUCKETS,
    PEER_RECORD_MAX_BYTES,
)

HUGE_INT, HUGE_FLOAT = 2**64 - 1, 1e30  # the widest values msgpack and the float bounds allow
DHT_OVERHEAD = 800  # per record in a bucket: the signer's key in the subkey, the signature, the expiration


def _name(i: int, char: str = "x") -> str:
    return f"n{i}-".ljust(80, char)


def _largest() -> dict:
    """Every field at its bound, with ASCII text."""
    link = {"bandwidth_gbps": HUGE_FLOAT, "latency_ms": HUGE_FLOAT, "at_most": True}
    times = dict.fromkeys(("compute_s", "wait_forward_s", "wait_backward_s", "allreduce_s", "commit_s"), HUGE_FLOAT)
    return {"name": _name(0), "address": "a" * 256, "device": "d" * 64, "tflops": HUGE_FLOAT, "memory_gb": HUGE_FLOAT,
            "state": "training", "heartbeat": -HUGE_FLOAT, "links": {_name(i): link for i in range(MAX_LINKS)},
            "dht_addrs": ["m" * 128] * MAX_DHT_ADDRS, "plan_version": HUGE_INT, "step": HUGE_INT,
            "stage": 2**63 - 1, "replica": 2**63 - 1, "param_checksum": "c" * 64, "prepared_step": HUGE_INT,
            "prepared_version": HUGE_INT, "loss": HUGE_FLOAT, "bytes_sent": dict.fromkeys(CHANNELS, HUGE_INT),
            "values_sent": dict.fromkeys(CHANNELS, HUGE_INT), "dropped_stale": HUGE_INT,
            "rejected": dict.fromkeys(REJECTIONS, HUGE_INT),
            "suspects": {_name(i): HUGE_INT for i in range(MAX_SUSPECTS)}, "error": "e" * MAX_ERROR_CHARS,
            "blamed": _name(1), "curve_key": "k" * 64, "admission": "h" * 64,
            "breakdown": {"step": HUGE_INT, **times}, "codec_gvalues": HUGE_FLOAT}


def test_the_largest_valid_record_fits_its_byte_bound_as_the_dht_stores_it():
    record = PeerRecord.from_wire(_largest())
    assert len(msgspec.msgpack.encode(record)) <= PEER_RECORD_MAX_BYTES
    assert len(MSGPackSerializer.dumps(record.to_wire())) <= PEER_RECORD_MAX_BYTES  # hivemind's own encoding
    assert record.to_wire() == _largest()  # a record within its bounds is written as it is
    # 10,000 peers over the buckets: even at every bound, the largest bucket (< 2x the mean) stays far below
    # hivemind's 4 MiB message limit.
    assert 2 * 10_000 / PEER_BUCKETS * (PEER_RECORD_MAX_BYTES + DHT_OVERHEAD) < 4 * 2**20 * 0.7


@pytest.mark.parametrize("field, value, where", [
    ("name", "p" * 81, r"length <= 80, got 'pp.* - at `\$.name`"),
    ("address", "a" * 257, r"length <= 256, got .* - at `\$.address`"),
    ("device", "d" * 65, r"length <= 64, got .* - at `\$.device`"),
    ("links", {_name(i): {"bandwidth_gbps": 1.0, "latency_ms": 1.0} for i in range(MAX_LINKS + 1)},
     r"length <= 28, got .* - at `\$.links`"),
    ("links", {"q" * 81: {"bandwidth_gbps": 1.0, "latency_ms": 1.0}}, r"length <= 80 - at `key` in `\$.links`"),
    ("suspects", {_name(i): 1 for i in range(MAX_SUSPECTS + 1)}, r"length <= 16, got .* - at `\$.suspects`"),
    ("dht_addrs", ["m"] * (MAX_DHT_ADDRS + 1), r"length <= 8, got .* - at `\$.dht_addrs`"),
    ("dht_addrs", ["m" * 129], r"length <= 128, got .* - at `\$.dht_addrs\[0\]`"),
    ("error", "e" * (MAX_ERROR_CHARS + 1), r"length <= 256, got .* - at `\$.error`"),
    ("blamed", "b" * 81, r"length <= 80, got .* - at `\$.blamed`"),
    ("param_checksum", "c" * 65, r"length <= 64, got .* - at `\$.param_checksum`"),
    ("stage", -2, r"Expected `int` >= -1, got -2 - at `\$.stage`"),
    ("rejected", {"r" * 65: 1}, r"length <= 64 - at `key` in `\$.rejected`"),
])
def test_a_field_beyond_its_bound_is_refused_by_name(field, value, where):
    with pytest.raises(RecordError, match=where):
        PeerRecord.from_wire({**_largest(), field: value})


def test_a_record_whose_multi_byte_text_exceeds_the_byte_bound_is_refused():
    wire = _largest()
    wire["links"] = {_name(i, "€"): link for i, link in enumerate(wire["links"].values())}  # 3 bytes a character
    with pytest.raises(RecordError, match=rf"encodes to \d+ bytes, above its bound of {PEER_RECORD_MAX_BYTES} bytes"):
        PeerRecord.from_wire(wire)


def _running_peer() -> PeerRecord:
    """A peer's record as peers.daemon.peer keeps it: built once, then updated field by field (unchecked)."""
    return PeerRecord(name="p1", address="tcp://127.0.0.1:1", device="cpu", tflops=1.0, memory_gb=1.0)


def test_a_writer_trims_what_a_running_peer_accumulates_so_its_heartbeat_never_fails():
    record = _running_peer()
    record.error, record.blamed = "step 3: " + "a long traceback " * 100, "z" * 200
    record.suspects = {f"s{i}": i for i in range(40)}
    record.links = {f"l{i}": Link(bandwidth_gbps=1.0, latency_ms=float(i)) for i in range(50)}
    record.dht_addrs = ["/dns4/" + "long" * 40] + [f"/ip4/10.0.0.{i}/tcp/1" for i in range(20)]
    written = PeerRecord.from_wire(record.to_wire())  # what peers.daemon.peer._announce does every heartbeat
    assert len(written.error) == MAX_ERROR_CHARS and written.error.startswith("step 3: ") and written.error[-1] == "…"
    assert set(written.suspects) == {f"s{i}" for i in range(40 - MAX_SUSPECTS, 40)}  # the most flagged
    assert set(written.links) == {f"l{i}" for i in range(MAX_LINKS)}  # the nearest
    assert written.dht_addrs == record.dht_addrs[1:MAX_DHT_ADDRS + 1] and len(written.blamed) == 80


def test_a_writer_sheds_multi_byte_text_until_the_record_fits():
    record = _running_peer()
    record.error = "€" * 1000
    record.suspects = {_name(i, "€"): i for i in range(MAX_SUSPECTS)}
    record.links = {_name(i, "€"): Link(bandwidth_gbps=1.0, latency_ms=float(i)) for i in range(20)}
    wire = record.to_wire()
    assert len(msgspec.msgpack.encode(wire)) <= PEER_RECORD_MAX_BYTES
    written = PeerRecord.from_wire(wire)
    # the error text went first, then the least flagged suspects, as many as needed; the links stayed
    assert written.error == "" and 0 < len(written.suspects) < MAX_SUSPECTS and written.links == record.links
    dropped = [count for name, count in record.suspects.items() if name not in written.suspects]
    assert min(written.suspects.values()) > max(dropped)
