"""The coordinator's typed configuration: flags of `swarm-coordinator`, checked once, up front.

Precedence is the command line over defaults (there is no config file and no environment
variable). Every error names its flag and says what to write instead.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from models.config import PRESETS

__all__ = ["CoordinatorConfig", "add_arguments", "from_args", "parse_listen"]


@dataclass(frozen=True)
class CoordinatorConfig:
    """One run of the coordinator. `stages`/`replicas` fix the grid; `min_peers` lets it choose."""

    host: str
    port: int
    model: str
    steps: int
    batch: int
    micro_batches: int
    stages: int | None
    replicas: int | None
    min_peers: int
    fwd: str
    bwd: str
    grad: str
    fwd_delta: bool
    checkpoint_dir: Path
    checkpoint_every: int
    resume: bool
    data: str | None
    lr: float
    seed: int

    def hyper(self) -> dict:
        """The hyper-parameters every peer needs, as published in the plan record."""
        return {"model": self.model, "batch": self.batch, "micro_batches": self.micro_batches, "lr": self.lr,
                "seed": self.seed, "data": self.data, "fwd_delta": self.fwd_delta, "steps": self.steps}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `swarm-coordinator` flags (issue 5 contract)."""
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="address of the coordinator's DHT node (0.0.0.0:PORT for volunteers on other "
                             "machines; port 0 picks a free one) [default: %(default)s]")
    parser.add_argument("--model", default="tiny", help=f"model preset: {', '.join(PRESETS)} [default: %(default)s]")
    parser.add_argument("--steps", type=int, required=True, metavar="N", help="train N global steps, then exit 0")
    parser.add_argument("--batch", type=int, default=8, metavar="B",
                        help="global batch in sequences per step, split over the replicas [default: %(default)s]")
    parser.add_argument("--micro-batches", type=int, default=2, metavar="M",
                        help="micro-batches per replica per step (pipeline depth) [default: %(default)s]")
    parser.add_argument("--stages", type=int, metavar="S", help="pipeline stages (with --replicas)")
    parser.add_argument("--replicas", type=int, metavar="R", help="data-parallel replicas (with --stages)")
    parser.add_argument("--min-peers", type=int, metavar="K",
                        help="start once K peers announced and let the scheduler choose the grid")
    parser.add_argument("--fwd", default="q3", help="codec of forward activations [default: %(default)s]")
    parser.add_argument("--bwd", default="q6", help="codec of backward activation gradients [default: %(default)s]")
    parser.add_argument("--grad", default="q4", help="codec of data-parallel gradients [default: %(default)s]")
    parser.add_argument("--fwd-delta", action="store_true",
                        help="send forward activations as AQ-SGD deltas against per-sample memories")
    parser.add_argument("--checkpoint-dir", type=Path, required=True, metavar="DIR",
                        help="checkpoints, coordinator.json (initial peers), report and identity live here")
    parser.add_argument("--checkpoint-every", type=int, default=10, metavar="K",
                        help="write a checkpoint every K committed steps [default: %(default)s]")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in DIR with the same identity and address")
    parser.add_argument("--data", metavar="PATH", help="training text (.txt/.md/.jsonl file or a directory) "
                                                       "[default: the bundled corpus]")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate [default: %(default)s]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data order")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port); ValueError naming `--listen` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen: expected HOST:PORT such as 0.0.0.0:31337, got {text!r}")
    return host, int(port)


def from_args(args: argparse.Namespace) -> CoordinatorConfig:
    """Validate parsed flags into a config; raises ValueError naming the offending flag."""
    import compression  # codec names are checked by the codec registry itself

    host, port = parse_listen(args.listen)
    if args.model not in PRESETS:
        raise ValueError(f"--model: unknown preset {args.model!r}; choose one of {', '.join(PRESETS)}")
    for flag, value in (("--steps", args.steps), ("--batch", args.batch), ("--micro-batches", args.micro_batches),
                        ("--checkpoint-every", args.checkpoint_every)):
        if value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if (args.stages is None) != (args.replicas is None):
        raise ValueError("--stages and --replicas go together; or give --min-peers to let the scheduler choose")
    if args.stages is not None and args.min_peers is not None:
        raise ValueError("give either --stages S --replicas R or --min-peers K, not both")
    if args.stages is None and args.min_peers is None:
        raise ValueError("give --stages S --replicas R, or --min-peers K")
    for flag, value in (("--stages", args.stages), ("--replicas", args.replicas), ("--min-peers", args.min_peers)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    layers = PRESETS[args.model].layers
    if args.stages is not None and args.stages > layers:
        raise ValueError(f"--stages {args.stages}: model {args.model!r} has only {layers} layers")
    if args.stages is not None and args.batch % (args.replicas * args.micro_batches):
        raise ValueError(f"--batch {args.batch} must split evenly into --replicas {args.replicas} x "
                         f"--micro-batches {args.micro_batches}")
    for flag, codec in (("--fwd", args.fwd), ("--bwd", args.bwd), ("--grad", args.grad)):
        try:
            compression.encode(_probe_tensor(), codec)
        except ValueError as error:
            raise ValueError(f"{flag}: {error}") from None
    if args.data is not None and not Path(args.data).exists():
        raise ValueError(f"--data: {args.data!r} does not exist")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if args.resume and not (args.checkpoint_dir / "latest.json").exists():
        raise ValueError(f"--resume: no checkpoint in {str(args.checkpoint_dir)!r} (latest.json is missing)")
    return CoordinatorConfig(
        host=host, port=port, model=args.model, steps=args.steps, batch=args.batch,
        micro_batches=args.micro_batches, stages=args.stages, replicas=args.replicas,
        min_peers=args.min_peers if args.min_peers is not None else args.stages * args.replicas,
        fwd=args.fwd, bwd=args.bwd, grad=args.grad, fwd_delta=args.fwd_delta,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every, resume=args.resume,
        data=str(Path(args.data).resolve()) if args.data else None, lr=args.lr, seed=args.seed)


def _probe_tensor():
    import torch

    return torch.zeros(8)
