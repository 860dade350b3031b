"""A stage's state as one blob: what donors serve, newcomers load and checkpoints store.

The blob carries the step it was taken after and the layer split, so a reader can refuse a
state from the wrong step or shape instead of training on it silently. The same format carries a
cell's codec state (`StageExecutor.codec_state`: error-feedback residuals, AQ-SGD memories), which
belongs to one (stage, replica) cell rather than to the stage: it is served at `codec_slot`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["StageState", "pack_state", "unpack_state", "codec_slot"]

CODEC_SLOT = 1 << 29  # state-server slots from here: codec state by cell (stage slots are the stage numbers)
_MAX_REPLICAS = 1 << 12


def codec_slot(stage: int, replica: int) -> int:
    """The state-server slot of cell (stage, replica)'s codec state, on its peer and in a checkpoint."""
    return CODEC_SLOT + stage * _MAX_REPLICAS + replica


@dataclass(frozen=True)
class StageState:
    """stage/layers: where in the model; step: the last step applied; state: the worker's state_dict."""

    stage: int
    layers: list[int]
    step: int
    state: dict[str, Any]


def pack_state(stage: int, layers: list[int], step: int, state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"stage": stage, "layers": list(layers), "step": step, "state": state}, buffer)
    return buffer.getvalue()


def unpack_state(blob: bytes) -> StageState:
    """Parse a blob; ValueError if it is not one (weights-only loading: no code runs)."""
    try:
        data = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        return StageState(stage=int(data["stage"]), layers=[int(n) for n in data["layers"]],
                          step=int(data["step"]), state=data["state"])
    except Exception as error:  # torch.load raises many types on a corrupt blob
        raise ValueError(f"not a stage state blob: {error}") from None
