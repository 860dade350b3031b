"""Cheap, reproducible noise for stochastic rounding: pairwise-independent, built from two vectors.

Stochastic rounding floor(v + u) is unbiased when each element's u is uniform on [0, 1). A
fresh random number per element dominates a naive quantizer (and an index hash inside a fused
kernel costs more than the rest of it), so the noise for a [rows, cols] block matrix is

    u[r, c] = frac(row[r] + col[c]),   row, col i.i.d. uniform from a hash of (seed, index).

Each u is uniform, and any two elements' u are independent (different rows: independent row
terms; same row, different columns: independent column terms), so every first- and second-
moment property of independent noise holds: unbiasedness, and the variance of any sum of
rounding errors. The kernel only adds two loaded floats. Values sit on a 2**-23 grid, so the
sum and the wrap stay exact in float32 and every device computes the same bits.
"""
from __future__ import annotations

import torch

__all__ = ["noise_vectors", "combine"]

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_MULT = 0x045D9F3B  # odd, < 2**31: a product with a 32-bit value stays below 2**63
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment


def noise_vectors(seed: int, rows: int, cols: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row [rows], col [cols]) float32 uniform on [0, 1), determined by `seed`."""
    # One hash pass over rows + cols distinct indices: fewer small ops for small messages.
    both = _uniform(rows + cols, *_seed_keys(seed), device)
    return both[:rows], both[rows:]


def combine(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """u[r, c] = frac(row[r] + col[c]), broadcast to [rows, cols]."""
    total = row[:, None] + col[None, :]
    return torch.where(total >= 1.0, total - 1.0, total)


def _uniform(count: int, key0: int, key1: int, device: torch.device) -> torch.Tensor:
    h = torch.arange(count, dtype=torch.int64, device=device) & _MASK32
    h = _mix(h ^ key0)
    h = _mix(h ^ key1)
    return (h >> 9).to(torch.float32) * (1.0 / (1 << 23))


def _mix(h: torch.Tensor) -> torch.Tensor:
    # Integer finalizer (xor-shift, multiply); int64 with values below 2**32, so no overflow.
    h = h ^ (h >> 16)
    h = (h * _MULT) & _MASK32
    h = h ^ (h >> 16)
    h = (h * _MULT) & _MASK32
    return h ^ (h >> 16)


def _seed_keys(seed: int) -> tuple[int, int]:
    """Two 32-bit keys from any integer seed (splitmix64), so nearby seeds give unrelated noise."""
    state = (seed + _GAMMA) & _MASK64
    return _splitmix(state), _splitmix((state + _GAMMA) & _MASK64)


def _splitmix(state: int) -> int:
    z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & _MASK32
