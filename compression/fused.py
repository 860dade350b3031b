"""Run the block quantizer's steps eagerly or compiled by `torch.compile`, by tensor size.

An eager quantizer makes a dozen passes over memory (the noise alone dominates); compiled, each
step in `blockquant.py` becomes one vectorized C++ loop on the CPU or one Triton kernel on CUDA.
Compiling costs seconds per variant on first use (inductor's on-disk cache then makes later
processes fast), so only tensors of at least `min_numel` values take the compiled path, each
(step, bits, rounding, device) variant compiles once per process, and any compile failure (no
C++ compiler, no Triton) falls back to eager with one warning. Both paths run the same code, so
their frames are interchangeable.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
import warnings
from typing import Callable, Iterator

import torch

from compression import blockquant

__all__ = ["set_fused", "compiled_min_numel", "quantize", "pack", "spread", "dequantize"]

# Below this many values the eager path wins: a compiled call's fixed cost (guards, launch) is
# tens of microseconds, and small messages should never wait for a compilation.
_settings = {"enabled": True, "min_numel": 1 << 16}
Variant = tuple[object, ...]  # (step name, bits or output dtype, device type)
Step = Callable[..., None]
_compiled: dict[Variant, Step] = {}
_failed: set[Variant] = set()
_lock = threading.Lock()
_settings_lock = threading.Lock()
_users = 0  # threads inside `_compile_settings`
_prior: list[tuple[object, str, object]] = []  # the settings to restore when the last one leaves
# Named by module, not referenced: importing dynamo/inductor costs seconds and touches global
# state, so it waits for the first compiled call (small-tensor processes never pay it).
_SETTINGS: dict[str, dict[str, object]] = {
    "torch._dynamo.config": {"recompile_limit": 64, "accumulated_recompile_limit": 1024,
                             "automatic_dynamic_shapes": False},
    "torch._inductor.config": {"emulate_precision_casts": True},
}


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


def compiled_min_numel() -> int | None:
    """The fewest values a tensor needs to take the compiled path (None: the path is off)."""
    return int(_settings["min_numel"]) if _settings["enabled"] else None


def quantize(blocks: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor] | None, bits: int,
             stats: torch.Tensor, codes: torch.Tensor, factor: torch.Tensor) -> None:
    """Quantize `blocks` into `stats` and `codes` (see `blockquant.quantize_into`)."""
    if noise is None:
        _run(("quantize~", bits), blocks.numel(), 3,
             lambda b, s, c, f: blockquant.quantize_into(b, None, s, c, bits, f), blocks, stats, codes, factor)
    else:
        # The column noise goes last among the tensors: its length is the block size, a constant.
        _run(("quantize", bits), blocks.numel(), 4,
             lambda b, r, s, c, n, f: blockquant.quantize_into(b, (r, n), s, c, bits, f), blocks, noise[0], stats,
             codes, noise[1], factor)


def pack(words: torch.Tensor, bits: int, packed: torch.Tensor) -> None:
    _run(("pack", bits), words.numel() * 8, 2, lambda w, p: blockquant.pack_into(w, p, bits), words, packed)


def spread(packed: torch.Tensor, bits: int, words: torch.Tensor) -> None:
    _run(("spread", bits), packed.shape[0] * 8, 2, lambda p, w: blockquant.spread_into(p, w, bits), packed, words)


def dequantize(stats: torch.Tensor, codes: torch.Tensor, out: torch.Tensor, factor: torch.Tensor) -> None:
    _run(("dequantize", out.dtype), codes.numel(), 3, blockquant.dequantize_blocks, stats, codes, out, factor)


@contextlib.contextmanager
def _compile_settings() -> Iterator[None]:
    """Dynamo/inductor settings for our compiled calls, shared by every thread inside one.

    All variants of a step share one code object, so lift dynamo's per-code recompile limit (8),
    and stop it from turning `bits` into a runtime value after the second variant (automatic
    dynamic: 3x slower kernels for every bit width). Keep the fp16 rounding of offset and scale
    that inductor would otherwise optimize away (codes must match the fp16 values sent).
    These are process-global configs: a `config.patch` per call would race between threads (one
    thread's exit restores the settings another is compiling under, or leaves them patched for
    good), so the first thread in applies them and the last one out restores them.
    """
    global _users, _prior
    with _settings_lock:
        if _users == 0:
            # Set and restore by hand: torch's `config.patch` keeps its prior values in a
            # ContextVar, so one thread cannot exit a patch another thread entered.
            configs = [(importlib.import_module(name), changes) for name, changes in _SETTINGS.items()]
            _prior = [(config, key, getattr(config, key)) for config, changes in configs for key in changes]
            for config, changes in configs:
                for key, value in changes.items():
                    setattr(config, key, value)
        _users += 1
    try:
        yield
    finally:
        with _settings_lock:
            _users -= 1
            if _users == 0:
                for module, key, value in _prior:
                    setattr(module, key, value)
                _prior = []


def _run(variant: Variant, numel: int, varying: int, fn: Step, *args: torch.Tensor) -> None:
    """`fn(*args)`, compiled when enabled and `numel` is large enough, else eager.

    The first `varying` args have a leading dimension that changes from call to call.
    """
    variant = variant + (args[0].device.type,)
    if not _settings["enabled"] or numel < max(_settings["min_numel"], 2) or variant in _failed:
        fn(*args)
        return
    try:
        # The first call of a variant compiles under a lock, so two threads never compile it at once.
        with _compile_settings():
            for arg in args[:varying]:
                # Leading dims count blocks or groups and vary per call; the rest (block size,
                # bits) stay compile-time constants. Not dynamic=True: that would also turn
                # `bits` into a runtime value and slow the kernels 3x.
                if arg.shape[0] >= 2:
                    torch._dynamo.mark_dynamic(arg, 0)
            compiled = _compiled.get(variant)
            if compiled is not None:
                compiled(*args)
                return
            with _lock:
                compiled = _compiled.get(variant) or torch.compile(fn)
                compiled(*args)
                _compiled[variant] = compiled
    except Exception as error:  # any compiler/toolchain failure: eager gives the same frames
        _failed.add(variant)
        # stacklevel 1: callers sit at varying depths; the message names the failing step.
        warnings.warn(f"compression: compiled {variant} failed ({type(error).__name__}: {error}); "
                      "using the slower eager path", RuntimeWarning, stacklevel=1)
        fn(*args)
