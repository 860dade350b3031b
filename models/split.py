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

__all__ = ["split", "build_stage", "even_layers", "check_layers", "param_checksum"]


def even_layers(layers: int, stages: int) -> list[int]:
    """Layers per stage, as even as possible, extra layers on the earliest stages: 5 / 3 -> 2,2,1."""
    if stages <= 0:
        raise ValueError(f"stages must be positive, got {stages}")
    if stages > layers:
        raise ValueError(f"cannot split {layers} layers into {stages} stages: every stage needs a layer")
    base, extra = divmod(layers, stages)
    return [base + (1 if i < extra else 0) for i in range(stages)]


def check_layers(config: GPTConfig, layers_per_stage: Sequence[int]) -> None:
    """Raise ValueError unless `layers_per_stage` is a list of positive counts summing to the model's layers."""
    if not layers_per_stage:
        raise ValueError("a split needs at least one stage")
    if any(count <= 0 for count in layers_per_stage):
        raise ValueError(f"every stage needs at least one layer, got {list(layers_per_stage)}")
    if sum(layers_per_stage) != config.layers:
        raise ValueError(f"layers per stage {list(layers_per_stage)} sum to {sum(layers_per_stage)}, "
                         f"but model {config.name!r} has {config.layers} layers")


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
