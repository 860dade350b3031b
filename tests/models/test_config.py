"""Model presets: shapes and parameter counts match the published models, without allocating them."""
import pytest

import models

# Published totals (GPT-2 ties the head to the token embedding, so its papers count it once).
PUBLISHED_TIED = {"small": 124_439_808, "gpt2-xl": 1_557_611_200}


@pytest.mark.parametrize("name", ["small", "gpt2-xl"])
def test_gpt2_presets_match_published_counts(name):
    config = models.get_config(name)
    assert models.count_parameters(config, tied_head=True) == PUBLISHED_TIED[name]
    assert models.count_parameters(config) == PUBLISHED_TIED[name] + config.vocab * config.d_model


def test_gpt3_xl_is_the_1_3b_shape():
    config = models.get_config("gpt3-xl")
    assert (config.layers, config.d_model, config.heads, config.context) == (24, 2048, 16, 2048)
    assert 1.30e9 <= models.count_parameters(config, tied_head=True) <= 1.33e9  # GPT-3 paper: "1.3B"


@pytest.mark.parametrize("name", list(models.PRESETS))
def test_modules_hold_exactly_the_analytic_count(name):
    config = models.get_config(name)
    stages = models.split(config, models.even_layers(config.layers, 2), device="meta")
    assert sum(p.numel() for stage in stages for p in stage.parameters()) == models.count_parameters(config)
    block = stages[0].blocks[str(0)]
    assert sum(p.numel() for p in block.parameters()) == models.layer_parameters(config)


def test_tiny_preset_shape():
    config = models.get_config("tiny")
    assert (config.layers, config.d_model, config.heads, config.context, config.vocab) == (4, 128, 4, 128, 256)


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="tiny"):
        models.get_config("huge")


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="heads"):
        models.GPTConfig(layers=2, d_model=100, heads=3, context=16)
