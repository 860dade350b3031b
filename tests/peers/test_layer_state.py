"""Re-splitting layers moves weights and AdamW moments by parameter name: the regrouped model is
the trained one, and its next step is bit-identical to the step the old split would have taken."""
import dataclasses

import pytest
import torch

import models
from peers.daemon.layer_state import old_stages_for, regroup
from peers.daemon.stage_state import pack_state, unpack_state
from peers.pipeline import OptimizerSettings
from peers.pipeline.stage_executor import _adamw

CONFIG = models.get_config("tiny")
OLD = [2, 2]
STEPS = 2
SETTINGS = OptimizerSettings()


def _build(layers, seed=0):
    stages = models.split(CONFIG, layers, seed=seed)
    return stages, [_adamw(stage, SETTINGS) for stage in stages]


def _backward(stages, seed):
    """Gradients of one random batch through the whole pipeline, in one process."""
    generator = torch.Generator().manual_seed(seed)
    tokens, targets = (torch.randint(0, CONFIG.vocab, (2, 16), generator=generator) for _ in range(2))
    for stage in stages:
        stage.zero_grad(set_to_none=False)
    x = tokens
    for stage in stages:
        x = stage(x)
    loss = stages[-1].loss(x, targets)
    loss.backward()
    return loss.detach()


def _params(stages):
    return {name: p for stage in stages for name, p in stage.named_parameters()}


def _moments(stages, optimizers):
    return {name: optimizer.state[p] for stage, optimizer in zip(stages, optimizers, strict=True)
            for name, p in stage.named_parameters()}


@pytest.fixture(scope="module")
def blobs():
    """The [2, 2] split after STEPS real AdamW steps, as the blobs donors serve."""
    assert CONFIG.layers == sum(OLD)
    stages, optimizers = _build(OLD)
    for step in range(STEPS):
        _backward(stages, seed=step)
        for optimizer in optimizers:
            optimizer.step()
    return {s: pack_state(s, OLD, STEPS, {"model": stage.state_dict(), "optimizer": optimizer.state_dict()})
            for s, (stage, optimizer) in enumerate(zip(stages, optimizers, strict=True))}


def _original(blobs):
    """A fresh copy of the trained [2, 2] split (each call unpacks anew: nothing shared)."""
    stages, optimizers = _build(OLD, seed=1)
    for s, blob in blobs.items():
        state = unpack_state(blob).state
        stages[s].load_state_dict(state["model"])
        optimizers[s].load_state_dict(state["optimizer"])
    return stages, optimizers


def _states(blobs):
    return {s: unpack_state(blob) for s, blob in blobs.items()}


@pytest.mark.parametrize("old, new, expected", [
    ([2, 2], [1, 3], [[0], [0, 1]]),
    ([2, 2], [3, 1], [[0, 1], [1]]),
    ([2, 2], [4], [[0, 1]]),
    ([2, 2], [1, 1, 1, 1], [[0], [0], [1], [1]]),
    ([1, 3], [3, 1], [[0, 1], [1]]),
    ([1, 2, 1], [2, 2], [[0, 1], [1, 2]]),
    ([4], [2, 2], [[0], [0]]),
])
def test_old_stages_for_names_the_stages_holding_the_new_layers(old, new, expected):
    assert [old_stages_for(old, new, s) for s in range(len(new))] == expected


@pytest.mark.parametrize("new", [[1, 3], [3, 1], [4], [1, 1, 1, 1], [2, 2]])
def test_regrouped_split_is_the_trained_model_and_steps_identically(blobs, new):
    original, original_optimizers = _original(blobs)
    states = _states(blobs)
    # A different seed, so nothing matches unless it was loaded.
    stages, optimizers = _build(new, seed=1)
    for s, (stage, optimizer) in enumerate(zip(stages, optimizers, strict=True)):
        state = regroup(CONFIG, states, new, s)
        stage.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    before, after = _params(original), _params(stages)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    expected, moments = _moments(original, original_optimizers), _moments(stages, optimizers)
    for name, moment in expected.items():
        assert moment.keys() == moments[name].keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(moments[name][key], value) for key, value in moment.items()), name
    assert [g["lr"] for o in optimizers for g in o.param_groups] == [SETTINGS.lr] * 2 * len(new)

    assert torch.equal(_backward(stages, seed=99), _backward(original, seed=99))
    for name, p in after.items():
        p.grad = before[name].grad.clone()  # the very same gradients on both splits
    for optimizer in original_optimizers + optimizers:
        optimizer.step()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert not torch.equal(after["blocks.0.qkv.weight"], unpack_state(blobs[0]).state["model"]["blocks.0.qkv.weight"])


def test_regrouped_states_share_no_moments(blobs):
    states = _states(blobs)
    first, second = (regroup(CONFIG, states, [4], 0)["optimizer"]["state"] for _ in range(2))
    assert first[0]["exp_avg"].data_ptr() != second[0]["exp_avg"].data_ptr()
    assert all(moment["exp_avg"].data_ptr() != states[0].state["optimizer"]["state"][0]["exp_avg"].data_ptr()
               for moment in first.values())


def test_a_missing_old_stage_is_refused(blobs):
    states = _states(blobs)
    del states[1]
    with pytest.raises(ValueError, match=r"needs old stages \[0, 1\].*\[1\] are missing"):
        regroup(CONFIG, states, [1, 3], 1)
    assert regroup(CONFIG, states, [1, 3], 0)["model"]  # stage 0 of [1, 3] needs only old stage 0


def test_states_of_different_steps_are_refused(blobs):
    states = _states(blobs)
    states[1] = dataclasses.replace(states[1], step=STEPS + 1)
    with pytest.raises(ValueError, match="different steps: 2 .* vs 3"):
        regroup(CONFIG, states, [4], 0)


def test_states_of_different_splits_are_refused(blobs):
    states = _states(blobs)
    states[1] = dataclasses.replace(states[1], layers=[1, 3])
    with pytest.raises(ValueError, match="disagree on the split"):
        regroup(CONFIG, states, [4], 0)


def test_a_split_that_does_not_fit_the_model_is_refused(blobs):
    with pytest.raises(ValueError, match=r"sum to 3, but model 'tiny' has 4 layers"):
        regroup(CONFIG, _states(blobs), [1, 2], 0)
    with pytest.raises(ValueError, match="different numbers of layers"):
        old_stages_for([2, 2], [1, 2], 0)
    with pytest.raises(ValueError, match="out of range"):
        old_stages_for([2, 2], [1, 3], 2)


def test_states_of_another_model_are_refused(blobs):
    narrow = dataclasses.replace(CONFIG, d_model=64, name="narrow")
    with pytest.raises(ValueError, match=r"old stage 0's .* has shape \(256, 128\), but 'narrow' needs \(256, 64\)"):
        regroup(narrow, _states(blobs), [4], 0)
    deeper = dataclasses.replace(CONFIG, layers=6, name="deeper")
    with pytest.raises(ValueError, match="sum to 4, but model 'deeper' has 6 layers"):
        regroup(deeper, _states(blobs), [3, 3], 0)


def test_a_state_filed_under_another_stage_is_refused(blobs):
    states = _states(blobs)
    states = {0: states[0], 1: states[0]}
    with pytest.raises(ValueError, match="given as old stage 1 is of stage 0"):
        regroup(CONFIG, states, [4], 0)
