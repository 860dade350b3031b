"""Torch's thread count for a block of code: set, then restored even when the block raises."""
from __future__ import annotations

import pytest
import torch

from peers.torch_threads import torch_threads


def test_the_count_holds_inside_and_is_restored_after():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_none_leaves_the_setting_alone_and_zero_is_refused():
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="positive"), torch_threads(0):
        pass
