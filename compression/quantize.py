"""`q1`..`q8`: blockwise min-max quantization with stochastic (default) or nearest rounding.

Spec: `q<k>[~][@<block>]`, e.g. `q4`, `q4@128`, `q3~`. Each block of `block` values (default
256, a multiple of 8) sends an fp16 offset and scale (4 bytes) and k bits per value, so n values
take 4 + ceil(n*k/8) + 4*ceil(n/block) payload bytes. Stochastic rounding keeps the decoded value
unbiased, which error feedback and AQ-SGD's theory assume; `~` rounds to nearest (error ~0.71x).

The leading 4 bytes are the frame's exponent e (int32): every offset and scale travels multiplied
by 2^e. fp16 alone cannot hold the stats of small tensors (activation gradients of a large model
are ~1e-6, whose block scales fall into fp16's subnormal grid or to zero) nor of huge ones; e puts
the tensor's peak near 2^10, chosen from a strided sample (no extra pass over the data) and
recomputed from the exact peak in the rare case a missed outlier overflows fp16.
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from compression import fused
from compression.blockquant import WORD_DTYPES
from compression.errors import CodecError, nonfinite_error
from compression.noise import noise_vectors
from compression.registry import register

__all__ = ["BlockQuantizer", "DEFAULT_BLOCK"]

DEFAULT_BLOCK = 256
_MAX_BLOCK = 1 << 16
_PARAMS = re.compile(r"(~)?(?:@(\d{1,6}))?(~)?")
_EXPONENT_BYTES = 4
_MAX_EXPONENT = 120  # 2^±120 keeps every fp32 peak's stats finite and the division exact
_PEAK_EXPONENT = 10  # peak * 2^e lands in [2^9, 2^10): 64x headroom below fp16's max for outliers
_SAMPLE = 4096  # values sampled to estimate the peak
_DECODE_SLAB = 1 << 22  # values decoded per pass: bounds decode's temporaries (eager: ~3 fp32 copies)


@dataclass(frozen=True)
class BlockQuantizer:
    """k-bit codes per value plus an fp16 (offset, scale) per block of `block` values."""

    bits: int
    block: int = DEFAULT_BLOCK
    stochastic: bool = True

    @property
    def spec(self) -> str:
        return f"q{self.bits}{'' if self.stochastic else '~'}" + (
            "" if self.block == DEFAULT_BLOCK else f"@{self.block}")

    @property
    def max_ratio(self) -> float:
        # Every value costs at least bits/8 bytes plus its share 4/block of the block stats, so n
        # float32 values never take fewer than n * (bits/8 + 4/block) payload bytes: q1 is 28x.
        return 4 / (self.bits / 8 + 4 / self.block)

    def payload_size(self, numel: int, dtype: torch.dtype) -> int:
        return _EXPONENT_BYTES + 4 * -(-numel // self.block) + -(-numel * self.bits // 8)

    def encode(self, flat: torch.Tensor, seed: int) -> list[torch.Tensor]:
        numel = flat.numel()
        if numel == 0:
            return [torch.zeros(_EXPONENT_BYTES, dtype=torch.uint8, device=flat.device)]
        blocks = _as_blocks(flat, self.block)
        nb, device = blocks.shape[0], blocks.device
        noise = noise_vectors(seed, nb, self.block, device) if self.stochastic else None
        stats = torch.empty(nb, 2, dtype=torch.float16, device=device)
        codes = _scratch("codes", blocks.numel(), device).view(nb, self.block)
        exponent = _exponent(_sampled_peak(flat))
        fused.quantize(blocks, noise, self.bits, stats, codes, _factor(exponent, device))
        if not bool(torch.isfinite(stats).all()):
            # NaN/inf input, or an outlier the sample missed overflowed fp16: retry once exactly.
            peak = float(flat.abs().amax())
            if not math.isfinite(peak):
                raise nonfinite_error(flat, self.spec, math.inf)
            exponent = _exponent(peak)
            fused.quantize(blocks, noise, self.bits, stats, codes, _factor(exponent, device))
        packed = codes
        if self.bits != 8:
            packed = _scratch("packed", blocks.numel() * self.bits // 8, device)
            fused.pack(codes.view(-1).view(torch.int64), self.bits, _groups(packed, self.bits))
        # The scratch buffers are reused by this thread's next call; `encode` copies them into the
        # frame before returning.
        head = torch.tensor([exponent], dtype=torch.int32).view(torch.uint8).to(device)
        return [head, stats.view(torch.uint8).view(-1), packed.view(-1)[: -(-numel * self.bits // 8)]]

    def decode(self, payload: torch.Tensor, numel: int, dtype: torch.dtype,
               out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            out = torch.empty(numel, dtype=dtype, device=payload.device)
        if numel == 0:
            return out
        nb = -(-numel // self.block)
        exponent = int(payload[:_EXPONENT_BYTES].cpu().view(torch.int32).item())
        if abs(exponent) > _MAX_EXPONENT:
            raise CodecError(f"codec {self.spec!r}: scale exponent {exponent} out of range (corrupted frame)")
        payload = payload[_EXPONENT_BYTES:]
        factor = _factor(exponent, payload.device)
        stats = payload[: 4 * nb].view(torch.float16).view(nb, 2)
        if not bool(torch.isfinite(stats).all()) or bool((stats[:, 1] < 0).any()):
            raise CodecError(f"codec {self.spec!r}: frame carries a NaN/inf or negative block scale "
                             "(corrupted frame)")
        packed = payload[4 * nb:]
        step = max(1, _DECODE_SLAB // self.block)  # blocks per slab: temporaries stay a few MB
        for first in range(0, nb, step):
            self._decode_slab(stats[first:first + step], packed, first, out, factor)
        return out

    def _decode_slab(self, stats: torch.Tensor, packed: torch.Tensor, first: int, out: torch.Tensor,
                     factor: torch.Tensor) -> None:
        """Blocks first .. first + len(stats) of the frame into their values in `out`."""
        nb, block = stats.shape[0], self.block
        start = first * block * self.bits // 8
        chunk = packed[start:start + nb * block * self.bits // 8]
        if chunk.numel() != nb * block * self.bits // 8:  # ragged last block: pad its codes to a whole block
            chunk = torch.cat([chunk, chunk.new_zeros(nb * block * self.bits // 8 - chunk.numel())])
        codes = chunk
        if self.bits != 8:
            codes = _scratch("codes", nb * block, packed.device)
            fused.spread(_groups(chunk, self.bits), self.bits, codes.view(torch.int64))
        codes = codes.view(nb, block)
        target = out[first * block:(first + nb) * block]
        if target.numel() == nb * block:
            fused.dequantize(stats, codes, target.view(nb, block), factor)
        else:
            whole = torch.empty(nb, block, dtype=out.dtype, device=out.device)
            fused.dequantize(stats, codes, whole, factor)
            target.copy_(whole.view(-1)[:target.numel()])


_local = threading.local()


def _sampled_peak(flat: torch.Tensor) -> float:
    """max |x| over an evenly strided sample of `flat` (an estimate: see the module docstring)."""
    step = max(1, flat.numel() // _SAMPLE)
    return float(flat[::step].abs().amax())


def _exponent(peak: float) -> int:
    """e with peak * 2^e in [2^9, 2^10), clamped; 0 for a zero or non-finite peak."""
    if peak == 0 or not math.isfinite(peak):
        return 0
    return max(-_MAX_EXPONENT, min(_MAX_EXPONENT, _PEAK_EXPONENT - math.frexp(peak)[1]))


def _factor(exponent: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(2.0 ** exponent, dtype=torch.float32, device=device)


def _scratch(role: str, numel: int, device: torch.device) -> torch.Tensor:
    """A per-thread uint8 buffer of at least `numel` bytes, kept between calls.

    Why: every fresh multi-MB allocation page-faults, and on a busy process that costs as much
    as quantizing. The cost is holding ~1.5 bytes per value of the largest tensor encoded.
    """
    buffers: dict[tuple[str, torch.device], torch.Tensor] = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get((role, device))
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[(role, device)] = torch.empty(numel, dtype=torch.uint8, device=device)
    return buffer[:numel]


def _groups(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Packed bytes as one row per group of 8 codes: [N, bits] bytes, or [N] integers when a
    group is exactly one (a free reinterpretation; see `blockquant.WORD_DTYPES`)."""
    word = WORD_DTYPES.get(bits)
    return packed.view(-1, bits) if word is None else packed.view(word).view(-1)


def _as_blocks(flat: torch.Tensor, block: int) -> torch.Tensor:
    """fp32 [nb, block] view of `flat`; a ragged tail is padded with its last value, which leaves
    that block's min and max unchanged."""
    flat = flat.to(torch.float32)
    pad = -flat.numel() % block
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(-1, block)


def _factory(bits: int) -> Callable[[str], BlockQuantizer]:
    def factory(params: str) -> BlockQuantizer:
        match = _PARAMS.fullmatch(params)
        if match is None or (match.group(1) and match.group(3)):
            raise CodecError(f"malformed parameters {params!r} for codec 'q{bits}'; expected e.g. "
                             f"'q{bits}', 'q{bits}@128', 'q{bits}~', 'q{bits}~@128'")
        block = int(match.group(2)) if match.group(2) else DEFAULT_BLOCK
        if block % 8 or not 8 <= block <= _MAX_BLOCK:
            raise CodecError(f"block size {block} in codec 'q{bits}{params}' must be a multiple of 8 "
                             f"between 8 and {_MAX_BLOCK}")
        return BlockQuantizer(bits, block, stochastic=not (match.group(1) or match.group(3)))
    return factory


for _bits in range(1, 9):
    register(f"q{_bits}", _factory(_bits))
