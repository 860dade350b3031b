"""The training job of a scenario: the model, the batch sizes, the codecs, the grid shape and the
per-step control round trip.

The scenario file's `compression` section names one codec per channel ("forward": activations,
"backward": their gradients, "gradient": the all-reduce), either as a bit-width, the original
contract (`{"forward_bits": 3, "backward_bits": 6, "gradient_bits": 4}`: k <= 8 is "qk", 16
"fp16", 32 "none"), or as any codec spec the codec registry accepts (`{"gradient": "cocktail"}`).
A channel left out is sent in fp16.

The `control` section prices what each step pays the coordinator besides training: every member
reports "prepared" after its all-reduce and waits for the commit (`{"commit_s": 0.004}`: seconds
of that round trip, both ends' processing included). Absent, it costs nothing.
"""
from __future__ import annotations

from models import GPTConfig
from swarm.scheduler.schema import Count, NonNegative, Record

__all__ = ["ModelSpec", "BatchSizes", "Compression", "Parallelism", "Control"]

_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)


class ModelSpec(Record, frozen=True):
    """A GPT decoder's shape; the same checks as `models.GPTConfig` (heads must divide d_model)."""

    layers: Count
    d_model: Count
    heads: Count
    seq_len: Count
    vocab: Count

    def __post_init__(self) -> None:
        super().__post_init__()
        _ = self.config  # GPTConfig raises ValueError naming the broken rule

    @property
    def config(self) -> GPTConfig:
        """The shape as `models.GPTConfig`, whose cost functions (`models.stages`) price it."""
        return GPTConfig(self.layers, self.d_model, self.heads, context=self.seq_len, vocab=self.vocab)


class BatchSizes(Record, frozen=True):
    """Sequences per optimizer step, and per micro-batch (which must divide it)."""

    global_sequences: Count
    micro_sequences: Count = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.global_sequences % self.micro_sequences:
            raise ValueError(f"micro_sequences: {self.micro_sequences} does not divide "
                             f"global_sequences {self.global_sequences}")


class Compression(Record, frozen=True, omit_defaults=True):
    """One codec per channel, by bit-width (`forward_bits`) or by codec spec (`forward`)."""

    forward_bits: int | None = None
    backward_bits: int | None = None
    gradient_bits: int | None = None
    forward: str | None = None
    backward: str | None = None
    gradient: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for channel, (bits, spec) in self._given().items():
            if bits is not None and spec is not None:
                raise ValueError(f"{channel}: give either {channel}_bits or {channel}, not both")
            if bits is not None and bits not in _BITS:
                raise ValueError(f"{channel}_bits: {bits} is not a supported width; use 1-8, 16 or 32")
            if spec is not None:
                # the codec registry loads torch: imported only when a scenario names a codec
                import compression

                try:
                    compression.resolve(spec)
                except compression.CodecError as problem:
                    raise ValueError(f"{channel}: {problem}") from None

    def _given(self) -> dict[str, tuple[int | None, str | None]]:
        return {"forward": (self.forward_bits, self.forward), "backward": (self.backward_bits, self.backward),
                "gradient": (self.gradient_bits, self.gradient)}

    @property
    def codecs(self) -> dict[str, str]:
        """Channel ("forward", "backward", "gradient") -> the codec spec it is sent with."""
        return {channel: spec if spec is not None else _codec_of(bits if bits is not None else 16)
                for channel, (bits, spec) in self._given().items()}


class Parallelism(Record, frozen=True):
    """A fixed grid: pipeline stages x data-parallel replicas."""

    stages: Count
    replicas: Count


class Control(Record, frozen=True, omit_defaults=True):
    """The step protocol's cost: `commit_s`, seconds from a member's "prepared" to the commit it waits for."""

    commit_s: NonNegative = 0.0


def _codec_of(bits: int) -> str:
    """The codec a bit-width of the original contract stands for."""
    if bits <= 8:
        return f"q{bits}"
    return "fp16" if bits == 16 else "none"
