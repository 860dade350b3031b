"""Error feedback: whatever a lossy codec dropped this step is added to the next step's input.

With a residual kept per key, the sum of what the receiver decoded over T steps equals the sum of
the inputs minus the last residual, which stays within one quantization step, so the error does
not accumulate. This is what makes 4-bit (or sparsified) data-parallel gradients train like fp32.
"""
from __future__ import annotations

from typing import Hashable, Mapping

import torch

from compression.errors import CodecError
from compression.frame import decode, encode
from compression.registry import resolve

__all__ = ["ErrorFeedback"]


class ErrorFeedback:
    """A codec plus one fp32 residual per key (e.g. per (peer, bucket) of a gradient).

        feedback = ErrorFeedback("q4")
        frame = feedback.encode(("peer-3", bucket), grad_chunk, seed=step)

    The owner of a link keeps one object per direction; `reset()` after an aborted step or a
    re-plan, when the residuals no longer belong to the tensors they were computed for.
    """

    def __init__(self, codec: str, *, generator: torch.Generator | None = None) -> None:
        resolve(codec)  # fail now, not on the first step
        self.codec = codec
        self._generator = generator
        self._residuals: dict[Hashable, torch.Tensor] = {}

    def encode(self, key: Hashable, tensor: torch.Tensor, *, seed: int | None = None) -> bytes:
        """One frame of `tensor` plus the residual kept for `key`; stores the new residual.

        On error (NaN input, shape change) nothing is stored, so the caller can skip the step.
        """
        if not isinstance(tensor, torch.Tensor):
            raise CodecError(f"error feedback encodes a torch.Tensor, got {type(tensor).__name__}")
        try:
            residual = self._residuals.get(key)
        except TypeError:
            raise CodecError(f"error feedback key must be hashable (e.g. a tuple), got {type(key).__name__}") from None
        target = tensor.detach().to(torch.float32)
        if residual is not None:
            if residual.shape != tensor.shape:
                raise CodecError(f"error feedback key {key!r} held shape {tuple(residual.shape)}, got "
                                 f"{tuple(tensor.shape)}; call reset({key!r}) after changing it")
            target = target + residual.to(target.device)
        frame = encode(target.to(tensor.dtype), self.codec, seed=seed, generator=self._generator)
        self._residuals[key] = target - decode(frame, device=tensor.device).to(torch.float32)
        return frame

    def residual(self, key: Hashable) -> torch.Tensor | None:
        """The fp32 residual held for `key`, or None."""
        return self._residuals.get(key)

    def residuals(self) -> dict[Hashable, torch.Tensor]:
        """Copies of every residual, for a checkpoint: a resumed run needs them to repeat exactly."""
        return {key: residual.clone() for key, residual in self._residuals.items()}

    def load_residuals(self, residuals: Mapping[Hashable, torch.Tensor], *,
                       device: torch.device | str | None = None) -> None:
        """Replace every residual by a copy of these (from `residuals()` of a link like this one),
        on `device` (a checkpoint loads to the CPU)."""
        for key, residual in residuals.items():
            if not isinstance(residual, torch.Tensor) or residual.dtype != torch.float32:
                raise CodecError(f"error feedback residual {key!r} must be an fp32 tensor, got "
                                 f"{getattr(residual, 'dtype', type(residual).__name__)}")
        self._residuals = {key: residual.to(device or residual.device, copy=True)
                           for key, residual in residuals.items()}

    def reset(self, key: Hashable | None = None) -> None:
        """Drop the residual of `key`, or of every key when None."""
        if key is None:
            self._residuals.clear()
        else:
            self._residuals.pop(key, None)

    def __len__(self) -> int:
        return len(self._residuals)
