"""The harness's eye on the swarm: a DHT client that keeps every peer's latest record on disk.

    python -m swarm.netsim.observer --initial-peers MULTIADDR... --out peers.json [--interval 0.5]

Runs inside the coordinator's namespace (the DHT is only reachable in there), reads the peer
records of every bucket (`read_peers`: all buckets at once) every `--interval` seconds and writes,
atomically, the newest record seen of every peer (by heartbeat) with its counters: bytes and values
sent per channel, drops, state, measured links.
Peers that already left keep their last record, so the file ends holding each peer's final
counters. Stops on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarm.netsim.observer", description=__doc__.splitlines()[0])
    parser.add_argument("--initial-peers", nargs="+", required=True, metavar="MULTIADDR")
    parser.add_argument("--host", default="127.0.0.1", help="this namespace's address (the DHT dials out from it)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    from peers.daemon.records import read_peers
    from peers.dht import SwarmDHT
    from peers.protocol import to_builtins

    try:
        dht = SwarmDHT(args.initial_peers, host=args.host, client_mode=True, startup_timeout=30.0)
    except Exception as error:  # hivemind raises its own types for unreachable multiaddrs
        print(f"observer: cannot join the DHT: {error}", file=sys.stderr)
        return 2
    latest: dict[str, dict[str, Any]] = {}
    try:
        while not stop.is_set():
            try:
                records = read_peers(dht)
            except Exception as error:  # the DHT going away at the end of a run is normal
                print(f"observer: read failed: {error}", file=sys.stderr)
                records = {}
            changed = False
            for name, record in records.items():
                if name not in latest or record.heartbeat >= latest[name]["heartbeat"]:
                    latest[name] = to_builtins(record)
                    changed = True
            if changed:
                _write_atomic(args.out, latest)
            stop.wait(args.interval)
    finally:
        dht.close()
    return 0


def _write_atomic(path: Path, value: dict[str, Any]) -> None:
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(value, indent=1))
    os.replace(scratch, path)


if __name__ == "__main__":
    sys.exit(main())
