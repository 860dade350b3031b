"""`swarm-coordinator`: the daemon that plans the swarm and keeps its checkpoints.

    swarm-coordinator --listen 0.0.0.0:31337 --model tiny --steps 100 --batch 8 --micro-batches 2 \\
        --stages 2 --replicas 2 --checkpoint-dir run1

It prints its DHT address (also written to DIR/coordinator.json as {"initial_peers": [...]}),
waits for peers, plans, drives the steps and exits 0 after the last step with a final
checkpoint. After a crash, the same command with `--resume` continues from the last checkpoint
with the same address, so running peers find it again. `--http HOST:PORT` serves the live
dashboard and /metrics (its URL goes to coordinator.json as "dashboard"); `--log-format json`
logs one JSON object per line, under one logger per concern (`swarm.coordinator.logs`).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from peers.logs import add_log_format_argument, configure_logging

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from swarm.coordinator.config import add_arguments

    parser = argparse.ArgumentParser(prog="swarm-coordinator", description="Plan and drive a swarm.",
                                     epilog="Timeouts are not flags: they derive from the measured links "
                                            "(see peers/daemon/timeouts.py).")
    add_arguments(parser)
    add_log_format_argument(parser)
    args = parser.parse_args(argv)
    from swarm.coordinator import Coordinator, from_args

    try:
        config = from_args(args)
    except ValueError as error:
        parser.error(str(error))
    from swarm.coordinator.logs import log_event

    configure_logging(args.log_format)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    training = config.training
    log_event(f"swarm-coordinator: {training.model}, {training.steps} steps, checkpoints in {config.checkpoint_dir}")
    try:
        return Coordinator(config, on_event=log_event).run(stop)
    except (ValueError, OSError) as error:
        print(f"swarm-coordinator: {error}", file=sys.stderr)
        if args.log_format == "json":
            logging.getLogger("swarm.coordinator").error("swarm-coordinator: %s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
