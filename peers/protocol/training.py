"""What every peer of a run must agree on: the training spec, the channel codecs, the timeouts.

The coordinator builds one `TrainingSpec` from its flags, stamps the plan's `Timeouts` into it and
publishes it in every plan record; `swarm-sim local` builds the same spec from the same flags. The
peers read typed fields, never a dict of strings.
"""
from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from models.config import PRESETS

from .validation import NonNegativeInt, PositiveFloat, PositiveInt, RecordError

__all__ = ["CHANNELS", "CODEC_FLAGS", "DTYPES", "AGGREGATES", "BUCKET_VALUES", "ComputeDtype", "AggregationRule",
           "Codecs", "Timeouts", "TrainingSpec"]

# The three compressed channels: activations forward, activation gradients backward, and the
# data-parallel gradient all-reduce. Every per-channel table in the swarm uses these names.
CHANNELS = ("forward", "backward", "gradient")
# The command-line flag that picks each channel's codec.
CODEC_FLAGS = {"forward": "--fwd", "backward": "--bwd", "gradient": "--grad"}

# What stage compute runs in: fp32, or bf16 autocast over fp32 master weights and optimizer state.
ComputeDtype = Literal["fp32", "bf16"]
DTYPES: tuple[str, ...] = ("fp32", "bf16")

# How the owner of an all-reduce chunk combines the replicas' shares (`peers.aggregation`):
# `mean`, or a rule that survives a minority of hostile or broken senders.
AggregationRule = Literal["mean", "clip", "trimmed-mean", "centered-clip"]
AGGREGATES: tuple[str, ...] = ("mean", "clip", "trimmed-mean", "centered-clip")

# Gradient values per all-reduce bucket (fp32: 1 MiB): the last backward pass sends each bucket as
# soon as it is final, so the all-reduce overlaps the rest of backward (the cost model prices this).
BUCKET_VALUES = 2**18

_CodecSpec = Annotated[str, msgspec.Meta(min_length=1, max_length=48)]


class Codecs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The codec of each channel; the defaults are AC-SGD's 3/6/4-bit recipe.

    forward_delta: send activations as AQ-SGD deltas against per-sample memories (`--fwd-delta`).
    """

    forward: _CodecSpec = "q3"
    backward: _CodecSpec = "q6"
    gradient: _CodecSpec = "q4"
    forward_delta: bool = False

    def check(self) -> None:
        """Raise ValueError naming the flag unless the compression layer knows every codec."""
        import compression  # torch-backed; the records themselves stay importable without it

        for channel in CHANNELS:
            try:
                compression.resolve(getattr(self, channel))
            except compression.CodecError as error:
                raise ValueError(f"{CODEC_FLAGS[channel]}: {error}") from None

    def of(self, channel: str) -> str:
        """The codec of `channel` (one of CHANNELS)."""
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; channels are {', '.join(CHANNELS)}")
        value: str = getattr(self, channel)
        return value


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The timeout hierarchy in seconds (derived in `peers.daemon.timeouts`)."""

    transfer_s: PositiveFloat
    step_s: PositiveFloat
    message_s: PositiveFloat
    heartbeat_s: PositiveFloat
    peer_ttl_s: PositiveFloat
    commit_s: PositiveFloat
    state_s: PositiveFloat = 120.0  # one donor's whole transfer of a stage's state (see derive_timeouts)


class TrainingSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One run's training: model preset, global batch, pipeline depth, optimizer, data, seed.

    batch: sequences per step over the whole grid, split over the replicas, each share cut into
    `micro_batches`. data: a corpus path (None: the bundled one). dtype: the stage compute's
    precision (`bf16` autocasts matmuls; weights, gradients and AdamW state stay fp32, so replicas
    and checkpoints do not depend on it). aggregate: the all-reduce's rule (`--aggregate`, see
    `peers.aggregation`): `mean`, or `clip`, `trimmed-mean`, `centered-clip` when some replicas may
    send garbage. data_sha256 / data_bytes: the corpus the coordinator serves, by content (set by
    the coordinator for `--data`; empty: every peer reads `data`, or the bundled corpus, itself).
    timeouts: filled in by the coordinator for each plan; None in a spec that has not been
    planned yet.
    """

    model: str = "tiny"
    batch: PositiveInt = 8
    micro_batches: PositiveInt = 2
    steps: PositiveInt = 10
    lr: PositiveFloat = 3e-3
    warmup_steps: NonNegativeInt = 0
    seed: int = 0
    data: str | None = None
    dtype: ComputeDtype = "fp32"
    aggregate: AggregationRule = "mean"
    data_sha256: Annotated[str, msgspec.Meta(pattern="^(?:[0-9a-f]{64})?$")] = ""
    data_bytes: NonNegativeInt = 0
    timeouts: Timeouts | None = None

    def __post_init__(self) -> None:
        if self.model not in PRESETS:
            raise RecordError(f"training field 'model': unknown preset {self.model!r}; "
                              f"choose one of {', '.join(PRESETS)}")

    def check_grid(self, replicas: int) -> None:
        """Raise ValueError unless the batch splits evenly into `replicas` x micro-batches."""
        if self.batch % (replicas * self.micro_batches):
            raise ValueError(f"--batch {self.batch} must split evenly into --replicas {replicas} x "
                             f"--micro-batches {self.micro_batches}")
