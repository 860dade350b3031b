"""The real all-reduce over zmq gives bit-for-bit what it gives over the in-process reference hub."""
from __future__ import annotations

import pytest
import torch

from peers.allreduce import GradientAverager
from peers.dataplane.transport import InProcessHub
from peers.dataplane.zmq_transport import ZmqTransport
from tests.threads import run_concurrently

GROUP = ["r0", "r1", "r2"]


def _average_on_threads(transports, gradients, codec: str) -> list[list[torch.Tensor]]:
    results = [[g.clone() for g in replica] for replica in gradients]

    def run(rank: int) -> None:
        averager = GradientAverager(transports[rank], GROUP, codec, error_feedback=False, timeout=20)
        for step in range(2):
            averager.average(step, results[rank])

    _, errors = run_concurrently([lambda rank=rank: run(rank) for rank in range(len(GROUP))],
                                 timeout=60, what="an all-reduce replica")
    assert not errors, errors
    return results


@pytest.mark.parametrize("codec", ["none", "q4"])
def test_allreduce_over_zmq_matches_the_in_process_reference(codec):
    generator = torch.Generator().manual_seed(0)
    gradients = [[torch.randn(300, 7, generator=generator), torch.randn(1001, generator=generator)]
                 for _ in GROUP]
    hub = InProcessHub()
    reference = _average_on_threads([hub.endpoint(name) for name in GROUP], gradients, codec)
    transports = [ZmqTransport(name) for name in GROUP]
    try:
        for transport in transports:
            for other in transports:
                if other is not transport:
                    transport.connect(other.name, other.address)
        over_zmq = _average_on_threads(transports, gradients, codec)
    finally:
        for transport in transports:
            transport.close()
    for ours, theirs in zip(over_zmq, reference, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b)
    assert all(torch.equal(over_zmq[0][0], replica[0]) for replica in over_zmq)
