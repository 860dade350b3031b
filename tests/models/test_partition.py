"""Splitting a model into stages: same function as the whole model, independent state dicts."""
import pytest
import torch

import models

CONFIG = models.get_config("tiny")


def _tokens(batch=2, length=16, seed=0):
    return torch.randint(0, 256, (batch, length + 1), generator=torch.Generator().manual_seed(seed))


def test_every_split_starts_from_identical_weights_and_computes_the_same_loss():
    tokens = _tokens()
    whole = models.split(CONFIG, [4], seed=3)[0]
    reference = whole.loss(whole(tokens[:, :-1]), tokens[:, 1:])
    for layers in ([1, 1, 1, 1], [3, 1], [1, 2, 1]):
        stages = models.split(CONFIG, layers, seed=3)
        assert models.param_checksum(stages) == models.param_checksum(whole)
        hidden = tokens[:, :-1]
        for stage in stages:
            hidden = stage(hidden)
        torch.testing.assert_close(stages[-1].loss(hidden, tokens[:, 1:]), reference, rtol=1e-6, atol=1e-6)


def test_seed_changes_the_weights():
    seed0, seed1 = models.split(CONFIG, [4], seed=0), models.split(CONFIG, [4], seed=1)
    assert models.param_checksum(seed0) != models.param_checksum(seed1)


def test_stage_roles():
    first, middle, last = models.split(CONFIG, [1, 2, 1])
    assert hasattr(first, "tok") and not hasattr(first, "head")
    assert not hasattr(middle, "tok") and not hasattr(middle, "head")
    assert hasattr(last, "head") and hasattr(last, "norm") and not hasattr(last, "tok")
    assert list(middle.blocks) == ["1", "2"]  # global layer names
    with pytest.raises(RuntimeError, match="last stage"):
        middle.loss(torch.zeros(1, 2, 128), torch.zeros(1, 2, dtype=torch.long))


def test_stage_state_dicts_save_and_load_independently(tmp_path):
    trained = models.split(CONFIG, [2, 2], seed=0)
    with torch.no_grad():
        for stage in trained:
            for p in stage.parameters():
                p.add_(torch.randn_like(p))
    for index, stage in enumerate(trained):
        torch.save(stage.state_dict(), tmp_path / f"stage{index}.pt")
    # Load only stage 1 into a fresh stage built on its own (as a peer does).
    fresh = models.build_stage(CONFIG, [2, 2], 1, seed=5)
    fresh.load_state_dict(torch.load(tmp_path / "stage1.pt"))
    assert models.param_checksum(fresh) == models.param_checksum(trained[1])
    assert set(fresh.state_dict()) == set(trained[1].state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        models.build_stage(CONFIG, [2, 2], 0).load_state_dict(torch.load(tmp_path / "stage1.pt"))


@pytest.mark.parametrize("layers, message", [
    ([2, 1], "sum to 3"), ([4, 0], "at least one layer"), ([], "at least one stage"), ([2, 3], "sum to 5")])
def test_impossible_splits_are_rejected(layers, message):
    with pytest.raises(ValueError, match=message):
        models.split(CONFIG, layers)


def test_even_layers():
    assert models.even_layers(5, 3) == [2, 2, 1]
    assert models.even_layers(4, 4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="every stage needs a layer"):
        models.even_layers(4, 5)


def test_sequence_longer_than_context_is_rejected():
    stage = models.split(CONFIG, [4])[0]
    with pytest.raises(ValueError, match="context"):
        stage(torch.zeros(1, CONFIG.context + 1, dtype=torch.long))
