"""The coordinator's typed configuration: flags of `swarm-coordinator`, checked once, up front.

Precedence is the command line over defaults (there is no config file and no environment
variable). Every error names its flag and says what to write instead.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from models.config import PRESETS
from peers.protocol import Codecs, PeerRecord, PlanChange, PlanReason, TrainingSpec, read_allowed_keys
from swarm.flags import add_codec_arguments, add_training_arguments, codecs_from_args, training_from_args

from .planning import Placement
from .report import REPORT_LOG

__all__ = ["CoordinatorConfig", "GivenPlan", "add_arguments", "from_args", "parse_listen", "load_given_plan",
           "given_placement"]


@dataclass(frozen=True)
class GivenPlan:
    """`--plan PLAN.json`: the first placement, exactly as given (its device ids are peer names).

    It exists to measure a baseline placement (a random or a locality plan) under the same
    conditions as the scheduler's; only the first plan is fixed, repairs after churn re-plan as usual.
    """

    path: Path
    grid: tuple[tuple[str, ...], ...]
    layers: tuple[int, ...]

    @property
    def members(self) -> list[str]:
        return [name for row in self.grid for name in row]


def load_given_plan(path: Path, training: TrainingSpec) -> GivenPlan:
    """Read a plan file as `swarm-sim plan --out` writes it; ValueError naming `--plan` and the fix."""
    from swarm.scheduler import Plan  # the scheduler's plan-file checks: shape, one layer count per stage

    try:
        plan = Plan.load(path)
    except ValueError as error:
        raise ValueError(f"--plan: {error}") from None
    names = plan.devices
    if len(set(names)) != len(names):
        raise ValueError(f"--plan {path}: a peer appears twice in the grid {[list(r) for r in plan.grid]}")
    layers = PRESETS[training.model].layers
    if sum(plan.layers) != layers:
        raise ValueError(f"--plan {path}: layers {list(plan.layers)} add up to {sum(plan.layers)}, but model "
                         f"{training.model!r} has {layers}; give one count per stage summing to {layers}")
    try:
        training.check_grid(plan.replicas)
    except ValueError as error:
        raise ValueError(f"--plan {path}: {error}") from None
    return GivenPlan(Path(path), plan.grid, plan.layers)


def given_placement(plan: GivenPlan, ready: dict[str, PeerRecord]) -> Placement | None:
    """The first placement of `--plan` once every peer it names is ready (None before); others are standby."""
    if any(name not in ready for name in plan.members):
        return None
    text = (f"first plan: {len(plan.grid)} stages x {len(plan.grid[0])} replicas as given by --plan "
            f"{plan.path.name}")
    return Placement([list(row) for row in plan.grid], list(plan.layers), sorted(set(ready) - set(plan.members)),
                     PlanReason(PlanChange.FIRST, text, joined=sorted(ready)))


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
    plan: GivenPlan | None = None
    http: tuple[str, int] | None = None  # --http: where the dashboard, its JSON API and /metrics listen
    swarm_key: Path | None = None  # --swarm-key: admitted peers only, CurveZMQ on the data plane
    allowed_keys: frozenset[str] = frozenset()  # --allow-keys: curve keys admitted without a join token
    evict_suspects: int = 0  # --evict-suspects K: evict a replica its stage flagged K committed steps in a row
    evict_after: int = 2  # --evict-after K: failures of one grid in a row that evict the peer they name most
    readmit_after_s: float = 30.0  # --readmit-after S: an evicted peer's first back-off (doubles each time)


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
    parser.add_argument("--plan", type=Path, metavar="PLAN.json",
                        help="make the first plan exactly this grid and layer split (a `swarm-sim plan --out` "
                             "file whose device ids are the peers' names) instead of the scheduler's; "
                             "waits for every peer it names; sets --stages/--replicas")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in DIR with the same identity and address")
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="serve the live dashboard, /api/status, /api/history and /metrics here (port 0 "
                             "picks a free one; the URL goes to DIR/coordinator.json as \"dashboard\") "
                             "[default: off]")
    parser.add_argument("--swarm-key", type=Path, metavar="FILE",
                        help="admit only peers with the join token (printed, and in DIR/coordinator.json) or a "
                             "key from --allow-keys, and encrypt and authenticate the data plane (CurveZMQ); "
                             "FILE holds the swarm's key pair, created (mode 0600) if missing [default: an open "
                             "swarm that anyone who reaches its ports can join]")
    parser.add_argument("--evict-suspects", type=int, default=0, metavar="K",
                        help="evict a replica that most of its stage's other replicas flag as sending outlier or "
                             "unusable gradients (see --aggregate) K committed steps in a row; 0 only names it in "
                             "the log and report [default: %(default)s]")
    parser.add_argument("--evict-after", type=int, default=2, metavar="K",
                        help="evict the peer that K failed attempts in a row at the same grid name most (the "
                             "silent end of a broken link, a neighbour sending garbage) [default: %(default)s]")
    parser.add_argument("--readmit-after", type=float, default=30.0, metavar="S",
                        help="let an evicted peer rejoin after S seconds, doubling each time the same peer is "
                             "evicted again (at most 600 s) [default: %(default)s]")
    parser.add_argument("--allow-keys", type=Path, metavar="FILE",
                        help="with --swarm-key: also admit peers whose curve public key (the \"public\" of their "
                             "--peer-key file) is listed in FILE, one per line")


def parse_listen(text: str, flag: str = "--listen") -> tuple[str, int]:
    """HOST:PORT -> (host, port); ValueError naming `flag` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{flag}: expected HOST:PORT such as 0.0.0.0:31337, got {text!r}")
    return host, int(port)


def from_args(args: argparse.Namespace) -> CoordinatorConfig:
    """Validate parsed flags into a config; raises ValueError naming the offending flag."""
    host, port = parse_listen(args.listen)
    training = training_from_args(args)
    codecs = codecs_from_args(args)
    given = load_given_plan(args.plan, training) if getattr(args, "plan", None) is not None else None
    if given is not None:
        shape = (len(given.grid), len(given.grid[0]))
        if args.min_peers is not None or (args.stages is not None and (args.stages, args.replicas) != shape):
            raise ValueError(f"--plan sets the grid ({shape[0]} stages x {shape[1]} replicas): drop --min-peers "
                             "and --stages/--replicas, or make them match")
        args.stages, args.replicas = shape
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
    swarm_key, allowed = getattr(args, "swarm_key", None), getattr(args, "allow_keys", None)
    if allowed is not None and swarm_key is None:
        raise ValueError("--allow-keys needs --swarm-key: an open swarm admits everybody anyway")
    if swarm_key is not None and swarm_key.is_dir():
        raise ValueError(f"--swarm-key {swarm_key} is a directory; give the path of a key file (created if missing)")
    if getattr(args, "evict_suspects", 0) < 0:
        raise ValueError(f"--evict-suspects must be 0 (off) or positive, got {args.evict_suspects}")
    if getattr(args, "evict_after", 2) < 1:
        raise ValueError(f"--evict-after must be at least 1, got {args.evict_after}")
    if not getattr(args, "readmit_after", 30.0) > 0:
        raise ValueError(f"--readmit-after must be positive seconds, got {args.readmit_after}")
    if args.resume and not any((args.checkpoint_dir / name).exists() for name in ("latest.json", REPORT_LOG)):
        raise ValueError(f"--resume: no earlier run in {str(args.checkpoint_dir)!r} (neither a checkpoint, "
                         "latest.json, nor a report.jsonl); drop --resume to start a new run there")
    return CoordinatorConfig(
        host=host, port=port, training=training, codecs=codecs, stages=args.stages, replicas=args.replicas,
        min_peers=args.min_peers if args.min_peers is not None else args.stages * args.replicas,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every, resume=args.resume, plan=given,
        http=parse_listen(args.http, "--http") if getattr(args, "http", None) else None,
        evict_suspects=getattr(args, "evict_suspects", 0), evict_after=getattr(args, "evict_after", 2),
        readmit_after_s=getattr(args, "readmit_after", 30.0), swarm_key=swarm_key,
        allowed_keys=_allowed_keys(allowed) if allowed is not None else frozenset())


def _allowed_keys(path: Path) -> frozenset[str]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"--allow-keys {path}: {error.strerror or error}") from None
    return read_allowed_keys(text, str(path))
