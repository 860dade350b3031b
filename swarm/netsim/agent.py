"""`net check`'s endpoint: a `ZmqTransport` in one namespace, driven by JSON lines on stdin.

    python -m swarm.netsim.agent --name a0 --host 10.213.1.1 --port 40000 [--link-latency FILE]

It measures the data plane exactly as a peer uses it: the same transport, the same delay line (at
nice -10 when root, so other load on the machine does not pass for network delay).
Each stdin line is one command, answered by one JSON line on stdout:
    {"op": "connect", "peers": {"b0": "tcp://10.213.1.3:40000"}}   -> {"ok": true}
    {"op": "sink", "from": "a0", "tag": 7, "count": 40}           -> {"arrivals": [seconds...], "sizes": [...]}
    {"op": "stream", "to": "b0", "tag": 7, "count": 40, "bytes": 131072}  -> {"seconds": ...}
    {"op": "echo", "from": "a0", "tag": 8, "count": 10}           -> {"ok": true}
    {"op": "ping", "to": "b0", "tag": 8, "count": 10}             -> {"rtts": [seconds...]}
    {"op": "quit"}
`sink` and `echo` answer at once ({"ready": true}) and again when done, so the harness can start
the other side after the first answer. `tag` is the message step: one measurement's messages
never mix with another's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

__all__ = ["main"]

_TIMEOUT_S = 120.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarm.netsim.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--link-latency", metavar="FILE")
    args = parser.parse_args(argv)
    try:  # a measuring tool: keep other load on the machine from showing up as network delay
        os.setpriority(os.PRIO_PROCESS, 0, -10)  # before any thread exists: they all inherit it
    except OSError:
        pass
    from peers.dataplane.delay_line import DelayLine
    from peers.dataplane.zmq_transport import ZmqTransport

    delays = DelayLine.load(args.link_latency) if args.link_latency else None
    transport = ZmqTransport(args.name, host=args.host, port=args.port, link_latency=delays, send_timeout=_TIMEOUT_S)
    lock = threading.Lock()

    def answer(value: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(value) + "\n")
            sys.stdout.flush()

    answer({"ready": True, "address": transport.address})
    workers: list[threading.Thread] = []
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            if op == "quit":
                break
            if op in ("sink", "echo"):  # receivers run beside the command loop, and say so at once
                worker = threading.Thread(target=_receive, args=(transport, command, answer), daemon=True)
                worker.start()
                workers.append(worker)
                answer({"ready": True})
            else:
                answer(_command(transport, command))
    finally:
        transport.close()
    return 0


def _command(transport: Any, command: dict[str, Any]) -> dict[str, Any]:
    from peers.dataplane.transport import Message

    op = command["op"]
    if op == "connect":
        for name, address in command["peers"].items():
            transport.connect(name, address)
        return {"ok": True}
    if op == "stream":
        payload = bytes(int(command["bytes"]))
        start = time.monotonic()
        for index in range(int(command["count"])):
            transport.send(command["to"], Message("act", int(command["tag"]), index, payload))
        return {"seconds": time.monotonic() - start}
    if op == "ping":
        rtts = []
        for index in range(int(command["count"])):
            start = time.monotonic()
            transport.send(command["to"], Message("act", int(command["tag"]), index, b"ping"))
            transport.recv(command["to"], "grad", int(command["tag"]), index, timeout=_TIMEOUT_S)
            rtts.append(time.monotonic() - start)
        return {"rtts": rtts}
    return {"error": f"unknown op {op!r}"}


def _receive(transport: Any, command: dict[str, Any], answer: Any) -> None:
    from peers.dataplane.transport import Message

    sender, tag = command["from"], int(command["tag"])
    arrivals, sizes = [], []
    try:
        for index in range(int(command["count"])):
            message = transport.recv(sender, "act", tag, index, timeout=_TIMEOUT_S)
            arrivals.append(time.monotonic())
            sizes.append(len(message.payload))
            if command["op"] == "echo":
                transport.send(sender, Message("grad", tag, index, b"pong"))
    except Exception as error:  # a timeout or a closed transport: the harness reports it
        answer({"error": f"{type(error).__name__}: {error}", "tag": tag})
        return
    answer({"arrivals": arrivals, "sizes": sizes, "tag": tag})


if __name__ == "__main__":
    sys.exit(main())
