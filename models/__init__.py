"""Models split into pipeline stages, plus the training data they read. Imports nothing of ours.

    config = models.get_config("tiny")
    stages = models.split(config, models.even_layers(config.layers, 4), seed=0)
    data = models.SequenceDataset(models.read_corpus(models.default_corpus_path()), config.context)

Shapes and cost arithmetic (`models.config`, `models.stages`) load without torch, so the scheduler
and the coordinator price models cheaply; the torch modules load on first use of their names.
"""
from importlib import import_module
from typing import TYPE_CHECKING, Any

from .config import PRESETS, GPTConfig, count_parameters, get_config, layer_parameters
from .stages import (
    BACKWARD_FLOPS_FACTOR,
    boundary_values,
    check_layers,
    even_layers,
    forward_flops_per_token,
    layer_forward_flops_per_token,
    stage_parameters,
)

if TYPE_CHECKING:  # the lazy names, for type checkers
    from .data import Batch, ByteTokenizer, SequenceDataset, default_corpus_path, read_corpus
    from .gpt import Block, Stage, init_parameters
    from .partition import build_stage, param_checksum, split

_LAZY = {
    "Stage": "gpt", "Block": "gpt", "init_parameters": "gpt",
    "split": "partition", "build_stage": "partition", "param_checksum": "partition",
    "ByteTokenizer": "data", "Batch": "data", "SequenceDataset": "data", "default_corpus_path": "data",
    "read_corpus": "data",
}

__all__ = [
    "GPTConfig", "PRESETS", "get_config", "count_parameters", "layer_parameters",
    "even_layers", "check_layers", "stage_parameters", "forward_flops_per_token", "layer_forward_flops_per_token",
    "boundary_values",
    "BACKWARD_FLOPS_FACTOR",
    "Stage", "Block", "init_parameters", "split", "build_stage", "param_checksum",
    "ByteTokenizer", "Batch", "SequenceDataset", "default_corpus_path", "read_corpus",
]


def __getattr__(name: str) -> Any:
    """Import the torch-backed names on first access (see the module docstring)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
