"""A newcomer fetches a stage's state from a live replica over the replica's data port."""
from __future__ import annotations

import io
import os
import socket

import pytest
import torch

from peers import wire
from peers.state_transfer import StateServer, StateTransferError, fetch_state
from peers.transport import Message
from peers.zmq_transport import ZmqTransport


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
    assert fetch_state(donor.address, 0, timeout=20) == blob
    assert donor.stats()["sent"]["state_chunk"] == 5


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
    body = {"stage": stage, "chunk": chunk} | ({} if serial is None else {"serial": serial})
    return Message(wire.STATE_REQUEST, stage, chunk, wire.pack_body(body))


def test_a_transfer_survives_one_publish_but_not_two():
    server = StateServer(chunk_bytes=4)
    server.publish(0, b"first-state")
    kind, _, _, meta = server.answer(_request(0, -1))
    serial = wire.unpack_body(meta, {"serial": int})["serial"]
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
