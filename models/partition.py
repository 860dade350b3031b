"""How a model splits into pipeline stages, and the checksum that proves replicas agree.

`split` is what the local grid uses; a volunteer builds only its own stage with `build_stage`.
Both validate the split up front, because a wrong split found halfway through a run (or on one
peer out of sixty-four) is far more expensive than a clear error at the start.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .config import GPTConfig
from .gpt import Stage, init_parameters
from .stages import check_layers

__all__ = ["split", "build_stage", "param_checksum"]


def build_stage(config: GPTConfig, layers_per_stage: Sequence[int], index: int, *, seed: int = 0,
                device: str | torch.device | None = None) -> Stage:
    """Stage `index` of the split, initialised from `seed` exactly as in every other split."""
    check_layers(config, layers_per_stage)
    if not 0 <= index < len(layers_per_stage):
        raise ValueError(f"stage index {index} out of range for {len(layers_per_stage)} stages")
    start = sum(layers_per_stage[:index])
    layers = range(start, start + layers_per_stage[index])
    with torch.device(device or "cpu"):
        stage = Stage(config, layers, first=index == 0, last=index == len(layers_per_stage) - 1)
    init_parameters(stage, seed)
    return stage


def split(config: GPTConfig, layers_per_stage: Sequence[int], *, seed: int = 0,
          device: str | torch.device | None = None) -> list[Stage]:
    """All stages of the model: stage 0 owns the embeddings, the last owns norm, head and loss."""
    check_layers(config, layers_per_stage)
    return [build_stage(config, layers_per_stage, i, seed=seed, device=device) for i in range(len(layers_per_stage))]


def param_checksum(modules: nn.Module | Iterable[nn.Module]) -> str:
    """sha256 over parameter names and raw bytes, in name order: equal iff bit-identical."""
    if isinstance(modules, nn.Module):
        modules = [modules]
    named = {name: p for module in modules for name, p in module.named_parameters()}
    digest = hashlib.sha256()
    for name in sorted(named):
        tensor = named[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
