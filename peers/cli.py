"""`swarm-peer`: what a volunteer runs to join a swarm.

    swarm-peer join --initial-peers /ip4/1.2.3.4/tcp/31337/p2p/12D3Koo... --device cuda:0

The peer measures its device, opens its data port, checks that the coordinator can reach that
port (and says what to open if not), announces itself in the DHT and trains whatever stage the
plan gives it until the run ends. Ctrl-C or SIGTERM leaves gracefully: the peer announces that it
is leaving first, so the swarm re-plans at once instead of waiting for a heartbeat to expire.
"""
from __future__ import annotations

import argparse
import logging
import secrets
import signal
import socket
import sys
import threading

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm-peer", description="Join a swarm as a volunteer.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    join = sub.add_parser("join", help="join a swarm and train the stage the coordinator assigns",
                          description="Join a swarm and train the stage the coordinator assigns.")
    join.add_argument("--initial-peers", nargs="+", required=True, metavar="MULTIADDR",
                      help="the coordinator's address as it printed it (or any peer's)")
    join.add_argument("--device", default="cpu", help="cpu or cuda:N [default: %(default)s]")
    join.add_argument("--name", help="this peer's name in the swarm [default: HOSTNAME-RANDOM]")
    join.add_argument("--host", default="127.0.0.1",
                      help="address to listen on; use an address other peers can reach (or 0.0.0.0 with "
                           "--advertise-host) [default: %(default)s]")
    join.add_argument("--port", type=int, default=0, help="data port (0 picks a free one) [default: %(default)s]")
    join.add_argument("--advertise-host", help="the address others dial when --host is 0.0.0.0")
    join.add_argument("--threads", type=int, help="torch CPU threads [default: torch's choice]")
    join.add_argument("--no-fused", dest="fused", action="store_false",
                      help="quantize eagerly instead of compiling fused kernels (a short CPU run should not "
                           "wait seconds for torch.compile)")
    args = parser.parse_args(argv)
    from peers.daemon import PeerDaemon, PeerOptions, UnreachableError  # heavy imports after --help

    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if args.threads is not None and args.threads <= 0:
        parser.error(f"--threads must be positive, got {args.threads}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    name = args.name or f"{socket.gethostname()}-{secrets.token_hex(2)}"
    options = PeerOptions(initial_peers=tuple(args.initial_peers), name=name, device=args.device, host=args.host,
                          port=args.port, advertise_host=args.advertise_host, threads=args.threads,
                          fused=args.fused)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        return PeerDaemon(options, on_event=lambda text: print(text, flush=True)).run(stop)
    except UnreachableError as error:
        print(f"swarm-peer: {error}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as error:
        print(f"swarm-peer: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
