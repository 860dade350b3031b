"""A fault injector for tests and demos: one replica lies in the all-reduce, as a hostile peer would.

    attack = Attack.parse("scale:1000@1")    # replica 1 of every stage scales its shares by 1000
    Attack.parse("noise:0.5@2")              # replica 2 adds Gaussian noise of std 0.5
    Attack.parse("nan@0")                    # replica 0 sends frames that decode to NaN

`swarm-sim local --attack SPEC` hands it to every stage's replica `replica`; `swarm-peer join
--attack SPEC` makes the peer attack while it is replica `replica` of its stage. Only the shares
the attacker *sends* in the reduce-scatter are tampered with (its own chunk, and what it
broadcasts as that chunk's owner, stay honest), which is what `--aggregate` has to survive. The
frames are well-formed frames of the plan's codec and shape, so they pass every header check: a
`nan` frame is an honest frame whose payload is rewritten so that it decodes to NaN (encoding
itself refuses NaN, which is how an honest peer's diverged step is caught before it is sent).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

import compression
from compression.cocktail import Cocktail
from compression.floats import FloatCodec
from compression.quantize import BlockQuantizer

__all__ = ["Attack", "ATTACK_FORMS", "nonfinite_frame"]

ATTACK_FORMS = "scale:FACTOR@R, noise:SIGMA@R or nan@R (R: the replica that attacks, e.g. scale:1000@1)"
_SPEC = re.compile(r"(scale|noise):([^@]+)@(\d+)|(nan)@(\d+)")


@dataclass(frozen=True)
class Attack:
    """What replica `replica` does to the gradient shares it sends.

    kind "scale": multiply by `amount`; "noise": add N(0, amount^2) noise; "nan": send NaN.
    """

    kind: str
    amount: float
    replica: int

    @classmethod
    def parse(cls, spec: str) -> Attack:
        """`scale:1000@1`, `noise:SIGMA@R` or `nan@R`; ValueError naming the accepted forms otherwise."""
        match = _SPEC.fullmatch(spec.strip()) if isinstance(spec, str) else None
        if match is None:
            raise ValueError(f"--attack: cannot read {spec!r}; expected {ATTACK_FORMS}")
        if match.group(4):
            return cls("nan", math.nan, int(match.group(5)))
        kind, text, replica = match.group(1), match.group(2), int(match.group(3))
        try:
            amount = float(text)
        except ValueError:
            raise ValueError(f"--attack: {kind} needs a number before '@', got {text!r}; expected "
                             f"{ATTACK_FORMS}") from None
        if not math.isfinite(amount) or (kind == "noise" and amount <= 0):
            raise ValueError(f"--attack: {kind} amount must be a finite{' positive' if kind == 'noise' else ''} "
                             f"number, got {text!r}; expected {ATTACK_FORMS}")
        return cls(kind, amount, replica)

    def __str__(self) -> str:
        return f"nan@{self.replica}" if self.kind == "nan" else f"{self.kind}:{self.amount:g}@{self.replica}"

    def apply(self, chunk: torch.Tensor, step: int, seed: int) -> torch.Tensor:
        """The tampered copy of `chunk` (the honest share); noise is seeded by (seed, step)."""
        if self.kind == "scale":
            return chunk * self.amount
        if self.kind == "noise":
            generator = torch.Generator().manual_seed((seed * 1_000_003 + step) & 0x7FFF_FFFF_FFFF)
            noise = torch.randn(chunk.shape, generator=generator, dtype=torch.float32)
            return chunk + (self.amount * noise).to(chunk.device, chunk.dtype)
        return torch.full_like(chunk, math.nan)

    def frame(self, chunk: torch.Tensor, step: int, seed: int, encode: Callable[[torch.Tensor], bytes]) -> bytes:
        """The frame to send instead of `encode(chunk)`: of the same codec and shape, but lying.

        `nan` encodes the honest share (encode refuses NaN) and rewrites the frame to decode to NaN.
        """
        if self.kind == "nan":
            return nonfinite_frame(encode(chunk))
        return encode(self.apply(chunk, step, seed))


def nonfinite_frame(frame: bytes) -> bytes:
    """`frame` with its header kept (codec, dtype, shape) and its payload rewritten to decode to NaN.

    Float codecs carry NaN values; the block quantizers (and cocktail's kept values) get the
    smallest scale exponent and extreme fp16 block stats, which pass the decoder's range checks but
    overflow float32 when it applies them: -inf + inf * code is NaN. ValueError for another codec.
    """
    info = compression.describe(frame)
    codec = compression.resolve(info.codec)
    data = bytearray(frame)
    payload = info.payload_at
    if isinstance(codec, FloatCodec):
        wire = codec.wire_dtype or info.dtype
        data[payload:] = bytes(torch.full((info.numel,), math.nan, dtype=wire).view(torch.uint8).numpy())
    elif isinstance(codec, BlockQuantizer):
        _poison_blocks(data, payload, -(-info.numel // codec.block))
    elif isinstance(codec, Cocktail):
        kept = codec._counts(info.numel)[1]  # values it keeps: they travel as one q4@128 payload
        _poison_blocks(data, payload + 4, -(-kept // 128))  # after the sample offset: q4@128 values
    else:
        raise ValueError(f"the nan attack cannot forge a non-finite {info.codec!r} frame; use a float, "
                         "q<k> or cocktail --grad codec")
    return bytes(data)


_MIN_EXPONENT = -120  # the block quantizers' smallest frame exponent (compression.quantize)


def _poison_blocks(data: bytearray, at: int, blocks: int) -> None:
    """Rewrite a block-quantized payload at `at`: exponent -120, stats (-65504, 65504) per block."""
    data[at:at + 4] = torch.tensor([_MIN_EXPONENT], dtype=torch.int32).view(torch.uint8).numpy().tobytes()
    stats = torch.tensor([-65504.0, 65504.0], dtype=torch.float16).repeat(blocks)
    data[at + 4:at + 4 + 4 * blocks] = stats.view(torch.uint8).numpy().tobytes()
