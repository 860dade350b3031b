"""One end of a shaped link for `test_net_traffic_links`: a requester timing it from its traffic, or a responder.

    python -m tests.swarm.traffic_peer respond NAME HOST OTHER OTHER_ADDRESS
    python -m tests.swarm.traffic_peer request NAME HOST OTHER OTHER_ADDRESS

The responder answers every `act` with a `grad` of the same size. The requester probes the link,
then for each line "EXCHANGES BYTES" on stdin sends that many `act`s of BYTES and waits for each
`grad`, and prints one JSON line: the probe's reading, the traffic's, and what the peer would
announce (`peers.daemon.links.traffic_links`).
"""
from __future__ import annotations

import itertools
import json
import sys
import time

import msgspec

from peers.daemon.links import probe_link, traffic_links
from peers.dataplane.meter import LinkMeter
from peers.dataplane.transport import Message, PeerTimeout
from peers.dataplane.zmq_transport import ZmqTransport

WINDOW = 4  # samples the reading is the best of: this test's phases are a few exchanges each
PORT = 7300


def main(role: str, name: str, host: str, other: str, other_address: str) -> None:
    transport = ZmqTransport(name, host=host, port=PORT)
    transport.meter = LinkMeter(time.monotonic, window=WINDOW)
    transport.connect(other, other_address)
    try:
        respond(transport, other) if role == "respond" else request(transport, other, other_address)
    finally:
        transport.close()


def respond(transport: ZmqTransport, other: str) -> None:
    for step in itertools.count():
        try:
            got = transport.recv(other, "act", step, 0, timeout=60)
        except PeerTimeout:
            return
        transport.send(other, Message("grad", step, 0, bytes(got.payload)))


def request(transport: ZmqTransport, other: str, other_address: str) -> None:
    probed = probe_link(other_address)
    step = 0
    for line in sys.stdin:
        exchanges, nbytes = (int(word) for word in line.split())
        for _ in range(exchanges):
            transport.send(other, Message("act", step, 0, bytes(nbytes)))
            transport.recv(other, "grad", step, 0, timeout=60)
            step += 1
        reading = transport.meter.bandwidth_gbps(other, probed.latency_ms / 1e3)
        announced = traffic_links({other: probed}, transport.meter).get(other)
        print(json.dumps({"probed": probed.bandwidth_gbps, "traffic": reading,
                          "announced": None if announced is None else msgspec.to_builtins(announced)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6])
