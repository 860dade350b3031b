"""Compile the codecs' kernels before they are on anybody's clock.

A compiled variant (step, bits, device) costs seconds on its first call (less with inductor's
on-disk cache) and then serves every size, since the leading dimensions are dynamic. A peer that
compiled inside its first training step would look hung to its neighbours, so it warms the codecs
it will use before it announces itself ready.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from compression.frame import decode, encode
from compression.fused import compiled_min_numel

__all__ = ["warm_up"]


def warm_up(codecs: Iterable[str], device: str = "cpu") -> None:
    """Encode and decode one tensor large enough for the compiled path with each codec in `codecs`."""
    numel = compiled_min_numel()
    if numel is None:  # the compiled path is off: nothing to warm
        return
    sample = torch.randn(2 * max(numel, 1024), device=device)
    for codec in dict.fromkeys(codecs):
        decode(encode(sample, codec, seed=0), device=torch.device(device))
