"""`swarm-coordinator`: the daemon that plans the swarm and keeps its checkpoints.

    swarm-coordinator --listen 0.0.0.0:31337 --model tiny --steps 100 --batch 8 --micro-batches 2 \\
        --stages 2 --replicas 2 --checkpoint-dir run1

It prints its DHT address (also written to DIR/coordinator.json as {"initial_peers": [...]}),
waits for peers, plans, drives the steps and exits 0 after the last step with a final
checkpoint. After a crash, the same command with `--resume` continues from the last checkpoint
with the same address, so running peers find it again.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from swarm.coordinator.config import add_arguments

    parser = argparse.ArgumentParser(prog="swarm-coordinator", description="Plan and drive a swarm.",
                                     epilog="Timeouts are not flags: they derive from the measured links "
                                            "(see peers/daemon/timeouts.py).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    from swarm.coordinator import Coordinator, from_args

    try:
        config = from_args(args)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    training = config.training
    say(f"swarm-coordinator: {training.model}, {training.steps} steps, checkpoints in {config.checkpoint_dir}")
    try:
        return Coordinator(config, on_event=say).run(stop)
    except (ValueError, OSError) as error:
        print(f"swarm-coordinator: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
