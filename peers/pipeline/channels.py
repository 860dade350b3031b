"""The three compressed channels of a stage and the byte counts they produce.

forward (activations to the next stage, `--fwd`, optionally AQ-SGD deltas with `--fwd-delta`),
backward (activation gradients to the previous stage, `--bwd`), gradient (the data-parallel
all-reduce, `--grad`, with error feedback). Every message crosses a `compression` codec, even
`none`, so the byte counts are what the wire carries and a frame is self-describing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import compression
from peers.protocol import CHANNELS

__all__ = ["ChannelStats", "ActivationChannel"]


@dataclass
class ChannelStats:
    """Bytes sent and tensor values they carried, per channel."""

    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 0))
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 0))

    def add(self, channel: str, nbytes: int, nvalues: int) -> None:
        """Count one message of `channel`: its wire bytes and the tensor values it carried."""
        self.bytes[channel] += nbytes
        self.values[channel] += nvalues

    def merge(self, other: ChannelStats) -> None:
        """Add another worker's (or step's) counts to these."""
        for channel in CHANNELS:
            self.add(channel, other.bytes[channel], other.values[channel])

    def bits_per_value(self) -> dict[str, float | None]:
        """Wire bits (headers and scales included) per value sent; None for an unused channel."""
        return {channel: (8 * self.bytes[channel] / self.values[channel] if self.values[channel] else None)
                for channel in CHANNELS}


class ActivationChannel:
    """One side of a forward link: encodes (sender) or decodes (receiver) activations.

    With `delta`, both sides keep AQ-SGD's per-sample memory m: the first visit of a sample goes
    at full precision, later visits send Q(a - m) and both sides move m by the decoded delta; the
    receiver computes on m. The two sides must see the same frames in the same order.
    """

    def __init__(self, codec: str, *, delta: bool = False, capacity: int | None = None) -> None:
        self.codec = codec
        # m in fp16 as in the AQ-SGD reference: half the memory; both sides round alike.
        self._delta = (compression.ActivationDelta(codec, capacity=capacity or 1024, memory_dtype=torch.float16)
                       if delta else None)

    def encode(self, sample_ids: torch.Tensor, activations: torch.Tensor, *, seed: int) -> bytes:
        """Sender: the frame for one micro-batch (`seed` drives stochastic rounding)."""
        if self._delta is None:
            return compression.encode(activations, self.codec, seed=seed)
        return self._delta.encode(sample_ids, activations, seed=seed)

    def decode(self, sample_ids: torch.Tensor, payload: bytes | memoryview, device: torch.device | None = None,
               *, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Receiver: the activations to compute on (m itself with delta); CodecError on a bad frame,
        or on one that is not this channel's codec or (given `shape`) not that shape, checked from
        the header before decoding."""
        if self._delta is None:
            return compression.decode(payload, device=device, codec=self.codec, shape=shape)
        return self._delta.decode(sample_ids, payload, device=device, shape=shape).clone()

    def shape_of(self, payload: bytes | memoryview) -> tuple[int, ...]:
        """The shape a frame claims, from its header(s) alone; CodecError on a malformed one."""
        if self._delta is None:
            return compression.describe(payload).shape
        return compression.ActivationDelta.shape_of(payload)

    def state(self) -> dict[str, Any]:
        """A copy of this side's AQ-SGD memory (empty without delta), for an exact resume."""
        return {"codec": self.codec, "delta": self._delta.state() if self._delta is not None else {}}

    def load_state(self, state: dict[str, Any], *, device: torch.device | None = None) -> None:
        """Adopt `state()` of this side of a link like this one, m on `device`; ValueError (a
        CodecError) if it is not."""
        delta = state.get("delta")
        if state.get("codec") != self.codec or bool(delta) != (self._delta is not None):
            raise compression.CodecError(
                f"activation channel state is for codec {state.get('codec')!r} "
                f"{'with' if delta else 'without'} AQ-SGD delta; this channel is {self.codec!r} "
                f"{'with' if self._delta is not None else 'without'}")
        if self._delta is not None:
            assert isinstance(delta, dict)
            self._delta.load_state(delta, device=device)

    def forget(self, sample_ids: list[int]) -> None:
        """Sender side of an aborted step: these samples' next visit goes in full, resyncing m."""
        if self._delta is not None:
            self._delta.forget(sample_ids)
