"""Warming the codecs compiles their kernels ahead, so the first large message does not pay for it."""
from __future__ import annotations

import pytest
import torch

import compression
from compression import fused


@pytest.fixture
def fresh_compiled_path():
    """The compiled path on, with no variant compiled yet in this process (restored afterwards)."""
    saved, enabled = dict(fused._compiled), fused._settings["enabled"]
    fused._compiled.clear()
    compression.set_fused(True)
    yield
    fused._compiled.clear()
    fused._compiled.update(saved)
    compression.set_fused(bool(enabled))


@pytest.mark.usefixtures("fresh_compiled_path")
def test_warm_up_compiles_each_codec_variant_the_first_message_needs():
    compression.warm_up(["q3", "q4"])
    warmed = set(fused._compiled)
    assert {variant[1] for variant in warmed} >= {3, 4}, warmed  # both bit widths compiled
    tensor = torch.randn(3 * (1 << 16))  # another size: the leading dimension is dynamic
    frame = compression.encode(tensor, "q4", seed=1)
    assert compression.decode(frame).shape == tensor.shape
    assert set(fused._compiled) == warmed  # nothing left to compile


def test_warm_up_does_nothing_when_the_compiled_path_is_off(monkeypatch):
    monkeypatch.setitem(fused._settings, "enabled", False)
    before = dict(fused._compiled)
    compression.warm_up(["q3"])
    assert fused._compiled == before
