"""The blockwise min-max quantizer's math, written once for two back ends.

These are plain torch functions: run eagerly for small tensors, and handed to `torch.compile`
(see `fused.py`) for large ones, where each becomes one vectorized pass. Both paths therefore
compute the same codes, and either decodes the other's frames. The steps are separate on
purpose: fused into one graph, the compiler recomputes a code (and its noise) for every output
byte that touches it, and loads strided bytes one at a time.

Layout per block of B values (B a multiple of 8): one fp16 offset (the block minimum) and one
fp16 scale, both multiplied by the frame's power-of-two `factor` (see `quantize.py`: it keeps
the stats of tiny or huge tensors inside fp16's normal range), then B k-bit codes packed
densely: each group of 8 codes is one 8k-bit little-endian integer written as k bytes (code i
in bits k*i .. k*i+k-1), so k = 3 puts 8 values in 3 bytes.
Codes travel between the steps as int64 "byte-lane words": 8 one-byte codes viewed as one int64,
which turns packing into contiguous shifts and masks on whole words.
"""
from __future__ import annotations

import torch

from compression.noise import combine

__all__ = ["quantize_blocks", "quantize_into", "pack_into", "spread_into", "dequantize_blocks", "WORD_DTYPES"]


def quantize_blocks(blocks: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor] | None, bits: int,
                    factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `blocks` [nb, B] -> (stats fp16 [nb, 2] = offset, scale, times `factor`; codes uint8 [nb, B]).

    `factor` is a 0-d fp32 power of two (a tensor, so a new value never recompiles), which makes
    the divisions below exact.

    Stochastic rounding with the (row [nb], col [B]) vectors of `noise.noise_vectors`, or
    round-to-nearest when `noise` is None.

    Non-finite input shows up as non-finite stats, which the caller checks (a cheap [nb] test
    instead of another pass over the data).
    """
    levels = (1 << bits) - 1
    offset16 = (blocks.amin(dim=1) * factor).to(torch.float16)
    offset = offset16.to(torch.float32) / factor
    # offset16 may round above the minimum: clamp so the scale never goes negative.
    scale16 = ((blocks.amax(dim=1) - offset).clamp_min(0.0) * (factor / levels)).to(torch.float16)
    scale = scale16.to(torch.float32) / factor
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    rounding = 0.5 if noise is None else combine(*noise)
    scaled = (blocks - offset[:, None]) * inverse[:, None] + rounding
    # Clamped to [0, levels] the value is non-negative, so the uint8 cast (truncation) is floor.
    codes = scaled.clamp(0, levels).to(torch.uint8)
    return torch.stack([offset16, scale16], dim=1), codes


def quantize_into(blocks: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor] | None, stats: torch.Tensor,
                  codes: torch.Tensor, bits: int, factor: torch.Tensor) -> None:
    """`quantize_blocks` writing into caller-owned `stats` and `codes` (reused buffers: a fresh
    allocation per call costs page faults comparable to the quantization itself)."""
    new_stats, new_codes = quantize_blocks(blocks, noise, bits, factor)
    stats.copy_(new_stats)
    codes.copy_(new_codes)


# Bit widths whose group of 8 codes is exactly one machine integer: stored as that integer
# (same little-endian bytes), which vectorizes far better than k separate byte stores.
WORD_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def pack_into(words: torch.Tensor, packed: torch.Tensor, bits: int) -> None:
    """Byte-lane words [N] (8 codes each) -> `packed`, either bytes [N, bits] or, for bit widths
    in WORD_DTYPES, the same bytes viewed as one integer per group [N]."""
    mask = (1 << bits) - 1
    word = words & mask
    for i in range(1, 8):
        word = word | (((words >> (8 * i)) & mask) << (bits * i))
    if packed.ndim == 1:
        packed.copy_(word.to(packed.dtype))  # keeps the low 8*bits bits
    else:
        shifts = 8 * torch.arange(bits, device=words.device, dtype=torch.int64)
        packed.copy_(((word[:, None] >> shifts) & 0xFF).to(torch.uint8))


def spread_into(packed: torch.Tensor, words: torch.Tensor, bits: int) -> None:
    """`packed` as written by `pack_into` -> byte-lane words [N]; its inverse."""
    mask = (1 << bits) - 1
    if packed.ndim == 1:
        word = packed.to(torch.int64) & ((1 << (8 * bits)) - 1)  # undo sign extension
    else:
        groups = packed.to(torch.int64)
        word = groups[:, 0]
        for j in range(1, bits):
            word = word | (groups[:, j] << (8 * j))
    spread = word & mask
    for i in range(1, 8):
        spread = spread | (((word >> (bits * i)) & mask) << (8 * i))
    words.copy_(spread)


def dequantize_blocks(stats: torch.Tensor, codes: torch.Tensor, out: torch.Tensor, factor: torch.Tensor) -> None:
    """Write offset + scale * code for uint8 codes [nb, B] into `out` [nb, B] (any float dtype),
    with the stats divided by the frame's power-of-two `factor` (0-d fp32)."""
    offset = (stats[:, 0].to(torch.float32) / factor)[:, None]
    scale = (stats[:, 1].to(torch.float32) / factor)[:, None]
    out.copy_(offset + scale * codes.to(torch.float32))
