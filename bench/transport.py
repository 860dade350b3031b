"""Throughput of ZmqTransport over loopback against raw zmq PUSH/PULL, measured in the same run.

Prints one JSON object: per payload size, the median MB/s of the transport (send -> mailbox ->
recv, headers and all) and of a bare PUSH/PULL pair moving the same frames zero-copy, and their
ratio (1.0 = the transport costs nothing over raw zmq).

    .venv/bin/python bench/transport.py [--sizes-mb 1 4 16] [--messages 16] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import zmq

from peers.dataplane.transport import Message
from peers.dataplane.zmq_transport import ZmqTransport


def transport_rate(size: int, messages: int) -> float:
    """MB/s moving `messages` payloads of `size` bytes from one ZmqTransport to another."""
    payload = bytes(size)
    with ZmqTransport("a") as sender, ZmqTransport("b") as receiver:
        sender.connect("b", receiver.address)
        sender.send("b", Message("warm", 0, 0, payload))
        receiver.recv("a", "warm", 0, 0, timeout=30)
        start = time.perf_counter()
        for index in range(messages):
            sender.send("b", Message("act", 0, index, payload))
        for index in range(messages):
            receiver.recv("a", "act", 0, index, timeout=60)
        return size * messages / (time.perf_counter() - start) / 1e6


def raw_rate(size: int, messages: int) -> float:
    """MB/s of a bare PUSH/PULL pair over loopback TCP, sender on its own thread."""
    payload = bytes(size)
    context = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        push.send(payload, copy=False)
        pull.recv(copy=False)

        def pump() -> None:
            for _ in range(messages):
                push.send(payload, copy=False)

        start = time.perf_counter()
        thread = threading.Thread(target=pump)
        thread.start()
        for _ in range(messages):
            pull.recv(copy=False)
        elapsed = time.perf_counter() - start
        thread.join()
        return size * messages / elapsed / 1e6
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        context.term()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 4, 16], help="payload sizes in MB")
    parser.add_argument("--messages", type=int, default=16, help="messages per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per size (the median is reported)")
    args = parser.parse_args(argv)
    if args.messages <= 0 or args.repeats <= 0 or min(args.sizes_mb) <= 0:
        parser.error("--sizes-mb, --messages and --repeats must be positive")
    results = []
    for size_mb in args.sizes_mb:
        size = int(size_mb * 1024 * 1024)
        pairs = [(transport_rate(size, args.messages), raw_rate(size, args.messages)) for _ in range(args.repeats)]
        ours, raw = (statistics.median(rates) for rates in zip(*pairs, strict=True))  # interleaved: same machine load
        results.append({"payload_mb": size_mb, "transport_mb_s": round(ours, 1), "raw_zmq_mb_s": round(raw, 1),
                        "ratio_vs_raw": round(ours / raw, 3)})
    print(json.dumps({"benchmark": "zmq_transport_loopback", "messages": args.messages, "repeats": args.repeats,
                      "statistic": "median", "results": results}, indent=2))


if __name__ == "__main__":
    main()
