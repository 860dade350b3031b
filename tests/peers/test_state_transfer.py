"""A newcomer fetches a stage's state from a live replica over the replica's data port."""
from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
import zmq

from peers.dataplane import wire
from peers.dataplane.transport import Message
from peers.dataplane.zmq_transport import ZmqTransport
from peers.state_transfer import (
    DEFAULT_CHUNK_BYTES,
    PASSIVE_MIN_BYTES,
    PartialState,
    StateServer,
    StateTransferError,
    fetch_state,
    fetch_state_any,
)


@pytest.fixture
def donor():
    with ZmqTransport("donor") as transport:
        yield transport


def test_torch_state_round_trips_bit_exactly(donor):
    model = torch.nn.Linear(64, 32)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    donor.serve_state(1, buffer.getvalue())
    state = torch.load(io.BytesIO(fetch_state(donor.address, 1, timeout=10)))
    for name, tensor in model.state_dict().items():
        assert torch.equal(state["model"][name], tensor)
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_large_state_moves_in_many_chunks(donor):
    blob = os.urandom(19 * 1024 * 1024 + 3)  # 5 chunks of 4 MiB: more than the request window
    donor.serve_state(0, blob)
    seen: list[tuple[int, int]] = []
    assert fetch_state(donor.address, 0, timeout=20, progress=lambda *done: seen.append(done)) == blob
    assert len(seen) == 5 and seen[-1] == (len(blob), len(blob))
    assert donor.stats()["sent"]["state_chunk"] == 5


def test_a_transfer_measures_its_link_once_its_stream_is_long_enough_to_tell_bandwidth(donor):
    readings: list[tuple[str, float, float]] = []
    donor.serve_state(0, os.urandom(PASSIVE_MIN_BYTES - 1))  # latency and the donor's own time would dominate
    fetch_state(donor.address, 0, timeout=20, on_link=lambda *reading: readings.append(reading))
    assert readings == []
    donor.serve_state(1, os.urandom(3 * DEFAULT_CHUNK_BYTES))
    fetch_state(donor.address, 1, timeout=20, on_link=lambda *reading: readings.append(reading))
    [(address, gbps, latency_ms)] = readings
    # loopback: far faster than any volunteer's uplink, and the round trip well under a second
    assert address == donor.address and gbps > 0.1 and 0 <= latency_ms < 500


def test_empty_state_is_a_valid_state(donor):
    donor.serve_state(2, b"")
    assert fetch_state(donor.address, 2, timeout=5) == b""


def test_wrong_stage_missing_donor_and_size_limit_fail_clearly(donor):
    donor.serve_state(1, b"x" * 1000)
    with pytest.raises(StateTransferError, match="serves no state for stage 0 .*stages \\[1\\]"):
        fetch_state(donor.address, 0, timeout=5)
    with pytest.raises(StateTransferError, match="max_bytes=999"):
        fetch_state(donor.address, 1, timeout=5, max_bytes=999)
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        nobody = f"tcp://127.0.0.1:{placeholder.getsockname()[1]}"
    with pytest.raises(StateTransferError, match="no answer from the donor .*another replica"):
        fetch_state(nobody, 1, timeout=0.3)
    donor.serve_state(1, None)
    with pytest.raises(StateTransferError, match="serves no state for stage 1"):
        fetch_state(donor.address, 1, timeout=5)


def _request(stage: int, chunk: int, serial: int | None = None) -> Message:
    body = wire.StateRequestBody(stage=stage, chunk=chunk, serial=serial)
    return Message(wire.STATE_REQUEST, stage, chunk, wire.pack_body(body))


def test_a_transfer_survives_one_publish_but_not_two():
    server = StateServer(chunk_bytes=4)
    server.publish(0, b"first-state")
    kind, _, _, meta = server.answer(_request(0, -1))
    serial = wire.unpack_body(meta, wire.StateMetaBody).serial
    server.publish(0, b"second-state")
    kind, step, index, payload = server.answer(_request(0, 2, serial))
    assert (kind, step, index, bytes(payload)) == (wire.STATE_CHUNK, serial, 2, b"ate")
    server.publish(0, b"third-state")
    kind, _, _, payload = server.answer(_request(0, 2, serial))
    assert kind == wire.STATE_ERROR and b"changed" in payload
    kind, _, _, payload = server.answer(_request(0, 99, serial + 2))
    assert kind == wire.STATE_ERROR and b"past the end" in payload
    kind, _, _, payload = server.answer(Message(wire.STATE_REQUEST, 0, 0, b"\xc1"))
    assert kind == wire.STATE_ERROR and b"bad state request" in payload


def test_newcomers_spread_over_replicas_and_fall_back_past_a_dead_one(donor):
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{placeholder.getsockname()[1]}"
    with ZmqTransport("donor2") as other:
        donor.serve_state(3, b"state-3")
        other.serve_state(3, b"state-3")
        for newcomer in ("n0", "n1", "n2", "n3", "n4", "n5"):
            assert fetch_state_any([donor.address, other.address], 3, spread_key=newcomer, timeout=5) == b"state-3"
        served = [t.stats()["sent"].get("state_meta", 0) for t in (donor, other)]
        assert min(served) >= 1 and sum(served) == 6
        # timeout is per donor: the dead one costs all of it, the live one must fit a fetch in it
        assert fetch_state_any([dead, donor.address], 3, spread_key="n0", timeout=1.0) == b"state-3"
        assert fetch_state_any([donor.address, dead], 3, spread_key="n0", timeout=1.0) == b"state-3"
    with pytest.raises(StateTransferError, match="every replica of stage 3 failed"):
        fetch_state_any([dead], 3, spread_key="n0", timeout=0.2)
    with pytest.raises(StateTransferError, match="checkpoint"):
        fetch_state_any([], 3, spread_key="n0")


class ScriptedDonor:
    """A raw ROUTER that answers state requests from a script, to inject donor failures exactly."""

    def __init__(self, replies):
        self._context = zmq.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self.address = f"tcp://127.0.0.1:{self._router.bind_to_random_port('tcp://127.0.0.1')}"
        self._replies = replies
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        for reply in self._replies:
            if not self._router.poll(5000):
                return
            identity, *frames = self._router.recv_multipart()
            for kind, step, index, payload in reply(wire.unpack(frames)):
                self._router.send_multipart([identity, *wire.pack(Message(kind, step, index, payload),
                                                                  sender="scripted", plan_version=0)])

    def close(self):
        self._thread.join(timeout=10)
        self._router.close()
        self._context.term()


def _meta(blob: bytes, serial: int, sha: str | None = None, chunks: int = 1, chunk_bytes: int = 1024):
    body = wire.StateMetaBody(stage=0, serial=serial, bytes=len(blob), chunks=chunks, chunk_bytes=chunk_bytes,
                              sha256=sha or hashlib.sha256(blob).hexdigest())
    return lambda request: [(wire.STATE_META, 0, -1, wire.pack_body(body))]


def _chunk(blob: bytes, serial: int):
    return lambda request: [("junk", 0, 0, b""), (wire.STATE_CHUNK, serial, 0, blob)]


def _retry(request: Message):
    return [(wire.STATE_ERROR, 0, 0, wire.pack_body(wire.StateErrorBody(error="changed", retry=True)))]


def test_client_restarts_when_the_state_changes_and_checks_the_sha256():
    donor = ScriptedDonor([_meta(b"old", 1), _retry, _meta(b"new", 2), _chunk(b"new", 2)])
    try:
        assert fetch_state(donor.address, 0, timeout=10) == b"new"
    finally:
        donor.close()
    donor = ScriptedDonor([_meta(b"abc", 1, sha="0" * 64), _chunk(b"abc", 1)])
    try:
        with pytest.raises(StateTransferError, match="sha256"):
            fetch_state(donor.address, 0, timeout=10)
    finally:
        donor.close()


def test_a_chunk_slower_on_the_wire_than_the_stall_timeout_is_no_stall():
    """A chunk arrives whole: at 2 Mbit/s a 4 MiB chunk is 17 s on the wire, longer than a 10 s message_s.
    Each chunk may take its share of the whole timeout (here 2 x 1.5 s of 4 s); a silent donor still fails."""
    blob, size = b"x" * 2048, 1024

    def slow_chunk(request: Message):
        time.sleep(1.0)
        return [(wire.STATE_CHUNK, 1, request.index, blob[request.index * size:(request.index + 1) * size])]

    donor = ScriptedDonor([_meta(blob, 1, chunks=2, chunk_bytes=size), slow_chunk, slow_chunk])
    try:
        assert fetch_state(donor.address, 0, timeout=4.0, stall_timeout=0.3) == blob
    finally:
        donor.close()
    silent = ScriptedDonor([_meta(blob, 1, chunks=2, chunk_bytes=size)])
    try:
        started = time.monotonic()
        with pytest.raises(StateTransferError, match="nothing for 2.0 s"):
            fetch_state(silent.address, 0, timeout=4.0, stall_timeout=0.3)
        assert time.monotonic() - started < 3.5
    finally:
        silent.close()


_DONOR_PROCESS = """
import random, sys, time
from peers.dataplane.zmq_transport import ZmqTransport
with ZmqTransport("dying-donor") as donor:
    donor.serve_state(0, random.Random(7).randbytes(int(sys.argv[1])))
    print(donor.address, flush=True)
    time.sleep(600)
"""


def test_a_donor_killed_mid_transfer_costs_its_chunks_in_flight_not_the_transfer(donor):
    size = 12 * 4 * 1024 * 1024 + 5  # 13 chunks of 4 MiB
    blob = random.Random(7).randbytes(size)
    donor.serve_state(0, blob)  # the stage's other replica, holding the same bytes
    dying = subprocess.Popen([sys.executable, "-c", _DONOR_PROCESS, str(size)], stdout=subprocess.PIPE, text=True)
    try:
        assert dying.stdout is not None
        first = dying.stdout.readline().strip()
        partial = PartialState()

        def kill_after_three_chunks(received: int, total: int) -> None:
            if received >= 3 * 4 * 1024 * 1024 and dying.poll() is None:
                dying.send_signal(signal.SIGKILL)
                dying.wait(timeout=10)

        readings: list[tuple[str, float, float]] = []
        fetched = fetch_state_any([first, donor.address], 0, timeout=60, stall_timeout=2.0, partial=partial,
                                  progress=kill_after_three_chunks, on_link=lambda *reading: readings.append(reading))
    finally:
        dying.kill()
        dying.wait()
    assert dying.returncode == -signal.SIGKILL
    assert fetched == blob
    from_first, from_second = partial.origins.count(first), partial.origins.count(donor.address)
    assert from_first >= 3 and from_first + from_second == 13 and from_second >= 13 - 3 - 4  # window of 4
    assert donor.stats()["sent"]["state_chunk"] == from_second  # nothing the dead donor sent was asked again
    assert partial.origins == [first] * from_first + [donor.address] * from_second  # resumed where it stopped
    # each donor's stream measured the link to it, the dead one's too (while it sent)
    assert [address for address, _, _ in readings] == [first, donor.address]
    assert all(gbps > 0 and latency_ms >= 0 for _, gbps, latency_ms in readings)
