"""The training and codec flags `swarm-sim local` and `swarm-coordinator` share, turned into specs.

One place defines `--model --batch --micro-batches --steps --lr --warmup-steps --seed --dtype
--aggregate --data` and `--fwd --bwd --grad --fwd-delta`, their defaults (those of `TrainingSpec` and
`Codecs`) and their checks, so the simulator and a live swarm read the same flags the same way.
Errors name the flag.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import msgspec

from models.config import PRESETS
from peers.protocol import DTYPES, Codecs, RecordError, TrainingSpec, from_builtins, validated
from peers.protocol.training import AGGREGATES

__all__ = ["add_training_arguments", "add_codec_arguments", "training_from_args", "codecs_from_args",
           "check_training", "check_codecs", "as_flags"]

_PATH = re.compile(r" - at `\$\.(\w+)")


def add_training_arguments(parser: argparse.ArgumentParser, *, steps_required: bool = False) -> None:
    """Add the training flags; their defaults are `TrainingSpec`'s."""
    spec = TrainingSpec()
    parser.add_argument("--model", default=spec.model,
                        help=f"model preset: {', '.join(PRESETS)} [default: %(default)s]")
    parser.add_argument("--steps", type=int, default=None if steps_required else spec.steps, required=steps_required,
                        metavar="N",
                        help="global training steps" + ("" if steps_required else " [default: %(default)s]"))
    parser.add_argument("--batch", type=int, default=spec.batch, metavar="B",
                        help="global batch in sequences per step, split over the replicas [default: %(default)s]")
    parser.add_argument("--micro-batches", type=int, default=spec.micro_batches, metavar="M",
                        help="micro-batches per replica per step (pipeline depth) [default: %(default)s]")
    parser.add_argument("--lr", type=float, default=spec.lr, help="AdamW learning rate [default: %(default)s]")
    parser.add_argument("--warmup-steps", type=int, default=spec.warmup_steps, metavar="K",
                        help="linear learning-rate warm-up over K steps [default: %(default)s]")
    parser.add_argument("--seed", type=int, default=spec.seed,
                        help="seed of the initial weights, the data order and stochastic rounding "
                             "[default: %(default)s]")
    parser.add_argument("--dtype", default=spec.dtype, choices=DTYPES,
                        help="stage compute precision: bf16 autocasts over fp32 master weights [default: %(default)s]")
    parser.add_argument("--aggregate", default=spec.aggregate, choices=AGGREGATES,
                        help="how each all-reduce chunk's owner combines the replicas' gradient shares: mean, or a "
                             "rule that survives a minority of hostile or broken replicas (clip: clip each share's "
                             "norm; trimmed-mean: coordinate-wise, drop the extremes; centered-clip: clip around "
                             "the median, the one to pick for an open swarm of >= 3 replicas per stage); suspect "
                             "senders are logged [default: %(default)s]")
    parser.add_argument("--data", metavar="PATH", help="training text (.txt/.md/.jsonl with \"text\" fields, or a "
                                                       "directory of them) [default: the bundled KJV Bible]")


def add_codec_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the per-channel codec flags; their defaults are `Codecs`' (3/6/4 bits)."""
    codecs = Codecs()
    parser.add_argument("--fwd", default=codecs.forward, metavar="CODEC",
                        help="codec of forward activations [default: %(default)s]")
    parser.add_argument("--bwd", default=codecs.backward, metavar="CODEC",
                        help="codec of backward activation gradients [default: %(default)s]")
    parser.add_argument("--grad", default=codecs.gradient, metavar="CODEC",
                        help="codec of the data-parallel all-reduce, with error feedback [default: %(default)s]")
    parser.add_argument("--fwd-delta", action="store_true",
                        help="AQ-SGD: send activation deltas against per-sample memories (memory grows with the "
                             "distinct samples seen: for fine-tuning-sized data)")


def training_from_args(args: argparse.Namespace) -> TrainingSpec:
    """The validated spec of the parsed training flags; ValueError naming the flag otherwise."""
    values = {"model": args.model, "batch": args.batch, "micro_batches": args.micro_batches, "steps": args.steps,
              "lr": args.lr, "warmup_steps": args.warmup_steps, "seed": args.seed, "data": args.data,
              "dtype": args.dtype, "aggregate": args.aggregate}
    try:
        spec = from_builtins(values, TrainingSpec, "training")
    except RecordError as error:
        raise _flag_error(error) from None
    return check_training(spec)


def codecs_from_args(args: argparse.Namespace) -> Codecs:
    """The validated codecs of `--fwd --bwd --grad --fwd-delta`; ValueError naming the flag otherwise."""
    values = {"forward": args.fwd, "backward": args.bwd, "gradient": args.grad, "forward_delta": args.fwd_delta}
    try:
        codecs = from_builtins(values, Codecs, "codecs")
    except RecordError as error:
        raise _flag_error(error) from None
    return check_codecs(codecs)


def as_flags(training: TrainingSpec, codecs: Codecs) -> list[str]:
    """The flags that `training_from_args` and `codecs_from_args` turn back into these specs."""
    flags = ["--model", training.model, "--steps", str(training.steps), "--batch", str(training.batch),
             "--micro-batches", str(training.micro_batches), "--lr", repr(training.lr),
             "--warmup-steps", str(training.warmup_steps), "--seed", str(training.seed), "--dtype", training.dtype,
             "--aggregate", training.aggregate,
             "--fwd", codecs.forward, "--bwd", codecs.backward, "--grad", codecs.gradient]
    flags += ["--fwd-delta"] if codecs.forward_delta else []
    return flags + (["--data", training.data] if training.data else [])


def check_training(spec: TrainingSpec) -> TrainingSpec:
    """`spec` checked field by field (bounds included) and its data path resolved; errors name the flag."""
    try:
        spec = validated(spec, "training")
    except RecordError as error:
        raise _flag_error(error) from None
    if spec.data is None:
        return spec
    path = Path(spec.data)
    if not path.exists():
        raise ValueError(f"--data: {spec.data!r} does not exist")
    return msgspec.structs.replace(spec, data=str(path.resolve()))


def check_codecs(codecs: Codecs) -> Codecs:
    """`codecs` checked against the compression layer; errors name the flag."""
    codecs.check()
    return codecs


_FLAGS = {"forward": "--fwd", "backward": "--bwd", "gradient": "--grad", "forward_delta": "--fwd-delta"}


def _flag_error(error: RecordError) -> ValueError:
    """A spec's validation error restated with the flag that set the field."""
    text = str(error)
    match = _PATH.search(text)
    if match is None:  # a rule across fields; its text names the field itself
        return ValueError(text.split(": ", 1)[-1].replace("training field 'model': ", "--model: "))
    field = match.group(1)
    flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
    rule = text[:match.start()].split(": ", 1)[-1]
    return ValueError(f"{flag}: {rule[0].lower()}{rule[1:]}")
