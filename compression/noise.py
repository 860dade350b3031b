"""Counter-based uniform noise for stochastic rounding: a hash of (seed, element index).

Stochastic rounding is unbiased as long as each element's noise is uniform; it needs no stream
state. Hashing the index lets one fused kernel make the noise in registers (no `torch.rand`
pass, which dominates a naive quantizer), and gives the same numbers on every device and on the
eager and compiled paths. Arithmetic stays in int64 below 2**63, so nothing relies on overflow.
"""
from __future__ import annotations

import torch

__all__ = ["seed_keys", "uniform"]

_MASK32 = 0xFFFFFFFF
_MULT = 0x045D9F3B  # odd, < 2**31: a product with a 32-bit value stays below 2**63
_MASK64 = (1 << 64) - 1


def seed_keys(seed: int) -> tuple[int, int]:
    """Two 32-bit keys from any integer seed, decorrelated so nearby seeds give unrelated noise."""
    state = seed & _MASK64
    keys = []
    for _ in range(2):
        # splitmix64 finalizer: every seed bit reaches every key bit.
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        keys.append((z ^ (z >> 31)) & _MASK32)
    return keys[0], keys[1]


def uniform(index: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """float32 noise in [0, 1) with 24 random bits, one value per int64 `index`.

    `keys` is an int64 tensor holding `seed_keys(seed)`; a tensor (not Python ints) so a compiled
    caller is not re-specialized for every seed.
    """
    h = _mix((index & _MASK32) ^ keys[0]) ^ keys[1]
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def _mix(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * _MULT) & _MASK32
    h = h ^ (h >> 16)
    h = (h * _MULT) & _MASK32
    return h ^ (h >> 16)
