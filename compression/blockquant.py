"""The blockwise min-max quantizer's math on whole blocks, written once for two back ends.

`quantize_blocks`, `pack_codes` and `decode_blocks` are plain torch functions: run eagerly for small tensors, and
handed to `torch.compile` (see `fused.py`) for large ones, where each fuses into one pass. Both paths therefore compute the same codes, and either decodes the other's frames.

Layout per block of B values (B a multiple of 8): one fp16 offset (the block minimum) and one
fp16 scale, then B k-bit codes packed densely, little-endian: each group of 8 codes is one
8k-bit integer written as k bytes, so k = 3 puts 8 values in 3 bytes.
"""
from __future__ import annotations

import torch

from compression.noise import uniform

__all__ = ["quantize_blocks", "pack_codes", "decode_blocks"]


def quantize_blocks(blocks: torch.Tensor, keys: torch.Tensor, bits: int, stochastic: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `blocks` [nb, B] -> (stats fp16 [nb, 2] = offset, scale; codes uint8 [nb, B]).

    Non-finite input shows up as non-finite stats, which the caller checks (a cheap [nb] test
    instead of a pass over the data). Codes are a separate step from packing so a compiled
    kernel computes each code (and its noise) once, not once per output byte it touches.
    """
    levels = (1 << bits) - 1
    nb, size = blocks.shape
    offset16 = blocks.amin(dim=1).to(torch.float16)
    offset = offset16.to(torch.float32)
    scale16 = ((blocks.amax(dim=1) - offset) / levels).to(torch.float16)
    scale = scale16.to(torch.float32)
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    if stochastic:
        index = torch.arange(nb * size, device=blocks.device, dtype=torch.int64).view(nb, size)
        noise = uniform(index, keys)
    else:
        noise = 0.5
    scaled = (blocks - offset[:, None]) * inverse[:, None] + noise
    codes = scaled.floor().clamp(0, levels).to(torch.uint8)
    return torch.stack([offset16, scale16], dim=1), codes


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [nb, B] of `bits` bits -> dense bytes [nb, B*bits/8]."""
    if bits == 8:
        return codes
    nb = codes.shape[0]
    return _pack(codes.view(nb, -1, 8).to(torch.int32), bits).view(nb, -1)


def decode_blocks(stats: torch.Tensor, packed: torch.Tensor, bits: int) -> torch.Tensor:
    """fp32 values [nb, B] from `quantize_blocks` + `pack_codes` output."""
    nb = packed.shape[0]
    codes = _unpack(packed.view(nb, -1, bits).to(torch.int32), bits)
    offset = stats[:, 0].to(torch.float32)[:, None, None]
    scale = stats[:, 1].to(torch.float32)[:, None, None]
    return (offset + scale * codes.to(torch.float32)).view(nb, -1)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., 8] int32 codes of `bits` bits -> [..., bits] bytes holding them back to back.

    Written as shifts by constants per output byte (no 64-bit word, no reduction), so the
    compiled kernel is plain vectorizable integer arithmetic.
    """
    out = []
    for j in range(bits):
        byte = None
        for i, shift in _overlaps(j, bits):
            part = codes[..., i] << shift if shift >= 0 else codes[..., i] >> -shift
            byte = part if byte is None else byte | part
        out.append(byte & 0xFF)
    return torch.stack(out, dim=-1).to(torch.uint8)


def _unpack(groups: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., bits] int32 bytes -> [..., 8] int32 codes; the inverse of `_pack`."""
    levels = (1 << bits) - 1
    out = []
    for i in range(8):
        code = None
        for j, shift in _overlaps_code(i, bits):
            part = groups[..., j] >> shift if shift >= 0 else groups[..., j] << -shift
            code = part if code is None else code | part
        out.append(code & levels)
    return torch.stack(out, dim=-1)


def _overlaps(byte: int, bits: int) -> list[tuple[int, int]]:
    """(code i, left shift) for each code with bits in output byte `byte`."""
    return [(i, bits * i - 8 * byte) for i in range(8)
            if bits * i < 8 * byte + 8 and bits * i + bits > 8 * byte]


def _overlaps_code(code: int, bits: int) -> list[tuple[int, int]]:
    """(byte j, right shift) for each byte holding bits of code `code`."""
    return [(j, bits * code - 8 * j) for j in range(bits)
            if 8 * j < bits * code + bits and 8 * j + 8 > bits * code]
