"""What each pipeline stage holds and costs: layer splits, parameters, FLOPs and boundary sizes.

Pure arithmetic on a `GPTConfig` (no torch), so the scheduler, the coordinator's timeouts and the
simulator price a 1.3B-parameter model without allocating it, and all of them price it alike.
The counts are exact for the stages `build_stage` builds: stage 0 holds the token and position
embeddings, the last stage the final norm and the untied head.
"""
from __future__ import annotations

from collections.abc import Sequence

from .config import GPTConfig, layer_parameters

__all__ = ["even_layers", "check_layers", "stage_parameters", "layer_forward_flops_per_token",
           "forward_flops_per_token", "boundary_values", "BACKWARD_FLOPS_FACTOR"]

# Backward costs about twice the forward pass (gradients of inputs and of weights).
BACKWARD_FLOPS_FACTOR = 2.0


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


def stage_parameters(config: GPTConfig, layers_per_stage: Sequence[int], index: int) -> int:
    """Parameters of stage `index` of the split, exactly as `build_stage` allocates them."""
    _check_index(layers_per_stage, index)
    d = config.d_model
    count = layers_per_stage[index] * layer_parameters(config)
    if index == 0:
        count += (config.vocab + config.context) * d
    if index == len(layers_per_stage) - 1:
        count += 2 * d + config.vocab * d
    return count


def layer_forward_flops_per_token(config: GPTConfig) -> float:
    """Forward FLOPs per token through one transformer block (2 per multiply-add): 24 d^2 for the
    four projections and the MLP, plus 4 * context * d for the attention scores and their weighted sum."""
    d = config.d_model
    return 24.0 * d * d + 4.0 * config.context * d


def forward_flops_per_token(config: GPTConfig, layers_per_stage: Sequence[int], index: int) -> float:
    """Forward FLOPs per token through stage `index`: its blocks, plus 2 * vocab * d for the last
    stage's head."""
    _check_index(layers_per_stage, index)
    flops = layers_per_stage[index] * layer_forward_flops_per_token(config)
    if index == len(layers_per_stage) - 1:
        flops += 2.0 * config.vocab * config.d_model
    return flops


def boundary_values(config: GPTConfig, sequences: int) -> int:
    """Values of the activation (or its gradient) crossing one stage boundary for `sequences`."""
    return sequences * config.context * config.d_model


def _check_index(layers_per_stage: Sequence[int], index: int) -> None:
    if not 0 <= index < len(layers_per_stage):
        raise ValueError(f"stage index {index} out of range for {len(layers_per_stage)} stages")
