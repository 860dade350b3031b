"""Run the block quantizer eagerly or compiled by `torch.compile`, whichever fits the tensor.

An eager quantizer makes a dozen passes over memory (and the noise alone dominates); compiled,
the quantizer becomes one C++ loop on the CPU or one Triton kernel on CUDA. Compiling costs
seconds per variant on first use (then inductor's on-disk cache makes later processes fast), so
only tensors of at least `min_numel` values take the compiled path, each (direction, bits,
rounding) variant is compiled once per process, and any compile failure (no C++ compiler, no
Triton) falls back to eager with one warning. Both paths run the same code in `blockquant.py`.
"""
from __future__ import annotations

import threading
import warnings
from typing import Callable

import torch

from compression.blockquant import decode_blocks, pack_codes, quantize_blocks

__all__ = ["set_fused", "run_encode", "run_decode"]

# Below this many values the eager path wins: the compiled call's fixed cost (guards, launch)
# is tens of microseconds, and small messages should never wait for a compilation.
_settings = {"enabled": True, "min_numel": 1 << 16}
_compiled: dict[tuple, Callable] = {}
_failed: set[tuple] = set()
_lock = threading.Lock()


def set_fused(enabled: bool, min_numel: int | None = None) -> None:
    """Turn the compiled path on or off for this process, optionally changing its size threshold.

    Why: tests and short scripts that never see large tensors can skip compilation entirely
    (`set_fused(False)`); a benchmark can force it (`set_fused(True, min_numel=0)`).
    """
    _settings["enabled"] = bool(enabled)
    if min_numel is not None:
        if min_numel < 0:
            raise ValueError("min_numel must be >= 0")
        _settings["min_numel"] = int(min_numel)


def run_encode(blocks: torch.Tensor, keys: torch.Tensor, bits: int, stochastic: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(stats, packed codes) of `blocks`, compiled when the tensor is large enough."""
    numel, device = blocks.numel(), blocks.device.type
    result = _run_compiled(("quantize", bits, stochastic, device), numel,
                           lambda b, k: quantize_blocks(b, k, bits, stochastic), blocks, keys)
    stats, codes = quantize_blocks(blocks, keys, bits, stochastic) if result is None else result
    packed = _run_compiled(("pack", bits, device), numel, lambda c: pack_codes(c, bits), codes)
    return stats, pack_codes(codes, bits) if packed is None else packed


def run_decode(stats: torch.Tensor, packed: torch.Tensor, bits: int) -> torch.Tensor:
    """`decode_blocks`, compiled when the tensor is large enough."""
    variant = ("decode", bits, packed.device.type)
    result = _run_compiled(variant, packed.numel() * 8 // bits, lambda s, p: decode_blocks(s, p, bits),
                           stats, packed)
    return decode_blocks(stats, packed, bits) if result is None else result


def _run_compiled(variant: tuple, numel: int, make: Callable, *args: torch.Tensor):
    """The compiled result, or None when the eager path should run instead."""
    if not _settings["enabled"] or numel < max(_settings["min_numel"], 2) or variant in _failed:
        return None
    try:
        # All variants share one code object, so lift dynamo's per-code recompile limit (8) for
        # these calls only. The first call of a variant compiles under a lock, so two threads
        # never compile the same thing at once.
        with torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=1024):
            fn = _compiled.get(variant)
            if fn is not None:
                return fn(*args)
            with _lock:
                fn = _compiled.get(variant) or torch.compile(make, dynamic=True)
                result = fn(*args)
                _compiled[variant] = fn
                return result
    except Exception as error:  # any compiler/toolchain failure: eager gives the same frames
        _failed.add(variant)
        warnings.warn(f"compression: compiled {variant[0]} q{variant[1]} on {variant[-1]} failed "
                      f"({type(error).__name__}: {error}); using the slower eager path", RuntimeWarning)
        return None
