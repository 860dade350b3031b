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
from pathlib import Path

from peers.logs import add_log_format_argument, configure_logging
from peers.protocol.validation import MAX_NAME_CHARS

__all__ = ["main"]

MAX_TFLOPS = 1e6  # an exaflop: a --tflops beyond it is a typo


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
    join.add_argument("--tflops", type=float, metavar="T",
                      help="announce T TFLOPS on the model's blocks instead of measuring them at start-up (a device "
                           "benchmarked already, or the twin of a peer that measured) [default: measure]")
    join.add_argument("--no-fused", dest="fused", action="store_false",
                      help="quantize eagerly instead of compiling fused kernels (a short CPU run should not "
                           "wait seconds for torch.compile)")
    join.add_argument("--metrics-port", type=int, metavar="P",
                      help="serve Prometheus metrics at http://HOST:P/metrics on --host (0 picks a free port) "
                           "[default: off]")
    add_log_format_argument(join)
    join.add_argument("--link-latency", metavar="FILE",
                      help="add one-way latency to this peer's sends in user space: a JSON object "
                           "{\"tcp://HOST:PORT\": ms} of destination data addresses (the network harness "
                           "`swarm-sim net` writes it; off by default)")
    join.add_argument("--attack", metavar="SPEC",
                      help="fault injector for tests and demos: while this peer is replica R of its stage it "
                           "tampers with the gradient shares it sends: scale:FACTOR@R, noise:SIGMA@R or nan@R "
                           "(see --aggregate on swarm-coordinator) [default: off]")
    join.add_argument("--join-token", metavar="TOKEN",
                      help="the token of a swarm that admits only invited peers (the coordinator prints it and "
                           "writes it to DIR/coordinator.json as \"join_token\")")
    join.add_argument("--peer-key", type=Path, metavar="FILE",
                      help="this peer's curve key pair (JSON, created with mode 0600 if missing), so it keeps one "
                           "identity across restarts; its \"public\" key is what a coordinator's --allow-keys "
                           "lists [default: a new key per run, with --join-token]")
    join.add_argument("--cache-dir", type=Path, metavar="DIR",
                      help="where the run's corpus is kept once fetched from the coordinator (by its sha256), and "
                           "this peer's DHT signing key (identity/NAME: a restarted peer keeps its name) "
                           "[default: $XDG_CACHE_HOME/swarm or ~/.cache/swarm]")
    args = parser.parse_args(argv)
    from peers.daemon import PeerDaemon, PeerOptions, UnreachableError  # heavy imports after --help

    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port must be in 0..65535, got {args.metrics_port}")
    if args.threads is not None and args.threads <= 0:
        parser.error(f"--threads must be positive, got {args.threads}")
    if args.tflops is not None and not 0 < args.tflops <= MAX_TFLOPS:
        parser.error(f"--tflops must be a positive number of TFLOPS up to {MAX_TFLOPS:g}, got {args.tflops}")
    if args.link_latency is not None:
        from peers.dataplane.delay_line import DelayLine

        try:
            DelayLine.load(args.link_latency)
        except ValueError as error:
            parser.error(str(error))
    attack = None
    if args.attack is not None:
        from peers.attack import Attack

        try:
            attack = str(Attack.parse(args.attack))
        except ValueError as error:
            parser.error(str(error))
    token = None
    if args.join_token is not None:
        from peers.protocol import JoinToken

        try:
            token = JoinToken.parse(args.join_token)
        except ValueError as error:
            parser.error(str(error))
    if args.peer_key is not None and args.peer_key.is_dir():
        parser.error(f"--peer-key {args.peer_key} is a directory; give the path of a key file (created if missing)")
    configure_logging(args.log_format)
    events = logging.getLogger("peers.daemon")
    name = args.name or f"{socket.gethostname()}-{secrets.token_hex(2)}"
    if len(name) > MAX_NAME_CHARS:
        parser.error(f"--name is {len(name)} characters long; peer records allow at most {MAX_NAME_CHARS}")
    if attack is not None:
        events.warning("%s: FAULT INJECTOR ACTIVE (--attack %s): this peer will send tampered gradients while "
                       "it is that replica of its stage; never use it in a real run", name, attack)
    options = PeerOptions(initial_peers=tuple(args.initial_peers), name=name, device=args.device, host=args.host,
                          port=args.port, advertise_host=args.advertise_host, threads=args.threads,
                          fused=args.fused, metrics_port=args.metrics_port, link_latency=args.link_latency,
                          attack=attack, join_token=token, peer_key=args.peer_key,
                          cache_dir=args.cache_dir, tflops=args.tflops)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        return PeerDaemon(options, on_event=events.info).run(stop)
    except UnreachableError as error:
        _fail(args.log_format, error)
        return 3
    except (ValueError, OSError) as error:
        _fail(args.log_format, error)
        return 2


def _fail(log_format: str, error: Exception) -> None:
    """Why the peer stops: on stderr as "swarm-peer: ...", and as a log record when logs are JSON."""
    print(f"swarm-peer: {error}", file=sys.stderr)
    if log_format == "json":
        logging.getLogger("peers.cli").error("swarm-peer: %s", error)


if __name__ == "__main__":
    sys.exit(main())
