"""The coordinator's typed configuration: flags of `swarm-coordinator`, checked once, up front.

Precedence is the command line over defaults (there is no config file and no environment
variable). Every error names its flag and says what to write instead.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from models.config import PRESETS
from peers.protocol import Codecs, TrainingSpec
from swarm.flags import add_codec_arguments, add_training_arguments, codecs_from_args, training_from_args

__all__ = ["CoordinatorConfig", "add_arguments", "from_args", "parse_listen"]


@dataclass(frozen=True)
class CoordinatorConfig:
    """One run of the coordinator. `stages`/`replicas` fix the grid; `min_peers` lets it choose."""

    host: str
    port: int
    training: TrainingSpec
    codecs: Codecs
    stages: int | None
    replicas: int | None
    min_peers: int
    checkpoint_dir: Path
    checkpoint_every: int
    resume: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `swarm-coordinator` flags."""
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="address of the coordinator's DHT node (0.0.0.0:PORT for volunteers on other "
                             "machines; port 0 picks a free one) [default: %(default)s]")
    add_training_arguments(parser, steps_required=True)
    add_codec_arguments(parser)
    parser.add_argument("--stages", type=int, metavar="S", help="pipeline stages (with --replicas)")
    parser.add_argument("--replicas", type=int, metavar="R", help="data-parallel replicas (with --stages)")
    parser.add_argument("--min-peers", type=int, metavar="K",
                        help="start once K peers announced and let the scheduler choose the grid")
    parser.add_argument("--checkpoint-dir", type=Path, required=True, metavar="DIR",
                        help="checkpoints, coordinator.json (initial peers), report and identity live here")
    parser.add_argument("--checkpoint-every", type=int, default=10, metavar="K",
                        help="write a checkpoint every K committed steps [default: %(default)s]")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in DIR with the same identity and address")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port); ValueError naming `--listen` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen: expected HOST:PORT such as 0.0.0.0:31337, got {text!r}")
    return host, int(port)


def from_args(args: argparse.Namespace) -> CoordinatorConfig:
    """Validate parsed flags into a config; raises ValueError naming the offending flag."""
    host, port = parse_listen(args.listen)
    training = training_from_args(args)
    codecs = codecs_from_args(args)
    if args.checkpoint_every <= 0:
        raise ValueError(f"--checkpoint-every must be positive, got {args.checkpoint_every}")
    if (args.stages is None) != (args.replicas is None):
        raise ValueError("--stages and --replicas go together; or give --min-peers to let the scheduler choose")
    if args.stages is not None and args.min_peers is not None:
        raise ValueError("give either --stages S --replicas R or --min-peers K, not both")
    if args.stages is None and args.min_peers is None:
        raise ValueError("give --stages S --replicas R, or --min-peers K")
    for flag, value in (("--stages", args.stages), ("--replicas", args.replicas), ("--min-peers", args.min_peers)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    layers = PRESETS[training.model].layers
    if args.stages is not None and args.stages > layers:
        raise ValueError(f"--stages {args.stages}: model {training.model!r} has only {layers} layers")
    if args.stages is not None:
        training.check_grid(args.replicas)
    if args.resume and not (args.checkpoint_dir / "latest.json").exists():
        raise ValueError(f"--resume: no checkpoint in {str(args.checkpoint_dir)!r} (latest.json is missing)")
    return CoordinatorConfig(
        host=host, port=port, training=training, codecs=codecs, stages=args.stages, replicas=args.replicas,
        min_peers=args.min_peers if args.min_peers is not None else args.stages * args.replicas,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every, resume=args.resume)
