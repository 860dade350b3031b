"""Stage state across a re-split of the layers: a new stage assembled from the old stages' states.

When the coordinator moves layers between stages ([2, 2] -> [1, 3]), no peer holds the state of a
new stage as a whole: its blocks (and the embeddings or the head) sit in one or more old stages.
`old_stages_for` says which old stages to fetch, and `regroup` stitches their `StageState`s into
the `{"model", "optimizer"}` dict that `StageExecutor.load_state_dict` takes, so training goes on
as if the split had always been the new one: same weights, same AdamW moments, same next step.

Parameters travel by name (names are global, `blocks.3.qkv.weight` in whichever stage holds layer
3). AdamW's state dict instead numbers parameters by position in its param groups, so each side's
numbering is read off a stage built on the meta device (no memory) with the executor's own
`_adamw`, which keeps the mapping exact however that function groups parameters.

    needed = old_stages_for(old_layers, new_layers, my_stage)   # [2, 2] -> [1, 3], stage 1: [0, 1]
    states = {s: unpack_state(blob_of(s)) for s in needed}       # one donor per old stage
    executor.load_state_dict(regroup(config, states, new_layers, my_stage))
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from models import GPTConfig, build_stage, check_layers
from peers.pipeline.stage_executor import OptimizerSettings, _adamw

from .stage_state import StageState

__all__ = ["old_stages_for", "regroup"]


def old_stages_for(old_layers: Sequence[int], new_layers: Sequence[int], new_stage: int) -> list[int]:
    """The old stages holding anything stage `new_stage` of `new_layers` needs, ascending.

    That is every old stage sharing a layer with it, plus old stage 0 (embeddings) for new stage
    0 and the last old stage (norm, head) for the last new stage. ValueError for splits of
    different layer counts, a non-positive count, or a stage out of range.
    """
    _check_split(old_layers, new_layers, new_stage)
    start = sum(new_layers[:new_stage])
    end = start + new_layers[new_stage]
    needed = {old for old, (low, high) in enumerate(_spans(old_layers)) if low < end and start < high}
    if new_stage == 0:
        needed.add(0)
    if new_stage == len(new_layers) - 1:
        needed.add(len(old_layers) - 1)
    return sorted(needed)


def regroup(config: GPTConfig, states: Mapping[int, StageState], new_layers: Sequence[int],
            new_stage: int) -> dict[str, Any]:
    """The state dict of stage `new_stage` of `new_layers`, from the old stages' states.

    `states` maps old stage index -> its `StageState`; all must come from the same step and the
    same old split, and hold every stage `old_stages_for` names (others are ignored). The result
    loads with `StageExecutor.load_state_dict` into an executor built for the new stage, whatever
    its optimizer settings (their hyper-parameters, and the learning rate of the last step, come
    from the old states). Optimizer tensors are copies, so two executors loaded from the same
    states never share Adam moments. ValueError saying what is wrong otherwise.
    """
    old_layers = _common_split(config, states)
    check_layers(config, new_layers)
    needed = old_stages_for(old_layers, new_layers, new_stage)
    missing = [old for old in needed if old not in states]
    if missing:
        raise ValueError(f"new stage {new_stage} of {list(new_layers)} needs old stages {needed} of "
                         f"{old_layers}, but the states of {missing} are missing")
    tensors: dict[str, torch.Tensor] = {}
    moments: dict[str, dict[str, Any]] = {}
    hyper: list[dict[str, Any]] = []
    for old in needed:
        model, by_name, groups = _unpack(config, old_layers, old, states[old].state)
        tensors.update(model)
        moments.update(by_name)
        if not hyper:
            hyper = groups
        elif groups != hyper:
            raise ValueError(f"old stages {needed[0]} and {old} have different optimizer settings: "
                             f"{hyper} vs {groups}")
    shapes, names = _layout(config, new_layers, new_stage)
    if len(names) != len(hyper):
        raise ValueError(f"the old optimizers have {len(hyper)} parameter groups, a new stage has {len(names)}")
    order = [name for group in names for name in group]
    param_groups, first = [], 0
    for settings, group in zip(hyper, names, strict=True):
        param_groups.append({**settings, "params": list(range(first, first + len(group)))})
        first += len(group)
    optimizer = {"state": {index: _copy(moments[name]) for index, name in enumerate(order) if name in moments},
                 "param_groups": param_groups}
    return {"model": {key: tensors[key] for key in shapes}, "optimizer": optimizer}


def _check_split(old_layers: Sequence[int], new_layers: Sequence[int], new_stage: int) -> None:
    for which, layers in (("old", old_layers), ("new", new_layers)):
        if not layers or any(count <= 0 for count in layers):
            raise ValueError(f"the {which} split {list(layers)} needs one or more stages, each with a layer")
    if sum(old_layers) != sum(new_layers):
        raise ValueError(f"the old split {list(old_layers)} and the new split {list(new_layers)} "
                         "hold different numbers of layers")
    if not 0 <= new_stage < len(new_layers):
        raise ValueError(f"new stage {new_stage} out of range for {len(new_layers)} stages")


def _spans(layers: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of each stage's global layer indices."""
    ends = [sum(layers[:i + 1]) for i in range(len(layers))]
    return list(zip([0, *ends[:-1]], ends, strict=True))


def _common_split(config: GPTConfig, states: Mapping[int, StageState]) -> list[int]:
    """The old split every state agrees on (same split, same step, keyed by its own stage)."""
    if not states:
        raise ValueError("no old stage states to regroup")
    first = next(iter(states.values()))
    for key, state in states.items():
        if state.stage != key:
            raise ValueError(f"the state given as old stage {key} is of stage {state.stage}")
        if list(state.layers) != list(first.layers):
            raise ValueError(f"old stage states disagree on the split: {list(first.layers)} (stage "
                             f"{first.stage}) vs {list(state.layers)} (stage {key})")
        if state.step != first.step:
            raise ValueError(f"old stage states are of different steps: {first.step} (stage {first.stage}) "
                             f"vs {state.step} (stage {key})")
    check_layers(config, first.layers)
    return list(first.layers)


def _layout(config: GPTConfig, layers: Sequence[int], index: int) -> tuple[dict[str, torch.Size], list[list[str]]]:
    """A stage's state-dict shapes, and its parameter names by optimizer group in AdamW's order.

    AdamW's state dict numbers parameters 0, 1, ... through its groups in order, so a name's
    position in the flattened groups is its index there.
    """
    stage = build_stage(config, layers, index, device="meta")
    names = {id(p): name for name, p in stage.named_parameters()}
    groups = [[names[id(p)] for p in group["params"]] for group in _adamw(stage, OptimizerSettings()).param_groups]
    return {key: tensor.shape for key, tensor in stage.state_dict().items()}, groups


def _unpack(config: GPTConfig, layers: list[int], index: int, state: dict[str, Any]
            ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Old stage `index`'s tensors, its Adam state by parameter name, and its groups' settings."""
    shapes, names = _layout(config, layers, index)
    model, optimizer = state["model"], state["optimizer"]
    if set(model) != set(shapes):
        raise ValueError(f"old stage {index}'s parameters do not fit {config.name!r} split {layers}: "
                         f"{sorted(set(model) ^ set(shapes))[:4]} differ")
    wrong = [key for key, shape in shapes.items() if model[key].shape != shape]
    if wrong:
        raise ValueError(f"old stage {index}'s {wrong[0]} has shape {tuple(model[wrong[0]].shape)}, "
                         f"but {config.name!r} needs {tuple(shapes[wrong[0]])}")
    order = [name for group in names for name in group]
    saved = [list(group["params"]) for group in optimizer["param_groups"]]
    if [len(group) for group in saved] != [len(group) for group in names] or \
            [i for group in saved for i in group] != list(range(len(order))):
        raise ValueError(f"old stage {index}'s optimizer groups {[len(g) for g in saved]} parameters, "
                         f"its stage needs {[len(g) for g in names]}")
    stray = [i for i in optimizer["state"] if not 0 <= int(i) < len(order)]
    if stray:
        raise ValueError(f"old stage {index}'s optimizer has state for parameters {stray} it does not hold")
    by_name = {order[int(i)]: moment for i, moment in optimizer["state"].items()}
    settings = [{key: value for key, value in group.items() if key != "params"}
                for group in optimizer["param_groups"]]
    return model, by_name, settings


def _copy(value: Any) -> Any:
    """`value` with every tensor (nested in dicts) cloned: loading aliases, AdamW steps in place."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    return value
