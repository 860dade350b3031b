"""Torch's intra-op thread count for a block of code, restored afterwards.

A float reduction split over 2 threads can round its last bit differently than over 1, and
stochastic rounding turns that bit into a visible loss difference, so a reference run compared
with live peers must compute with the peers' thread count: `with torch_threads(1): ...`.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` intra-op threads (None: leave the setting alone)."""
    if count is None:
        yield
        return
    if count <= 0:
        raise ValueError(f"thread count must be positive, got {count}")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
