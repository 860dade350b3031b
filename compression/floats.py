"""Plain float codecs: `none` (the input's own bytes), `fp16` and `bf16` (half-width casts).

`none` is what AQ-SGD sends on a sample's first visit; `fp16`/`bf16` are the cheap 2x codecs.
Values that overflow the target format would silently become inf, so they raise instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from compression.errors import CodecError, nonfinite_error
from compression.registry import register

__all__ = ["FloatCodec"]


@dataclass(frozen=True)
class FloatCodec:
    """Send values as `wire_dtype`, or in the input's own dtype when `wire_dtype` is None."""

    spec: str
    wire_dtype: torch.dtype | None

    @property
    def max_ratio(self) -> float:
        # `none` sends the decoded bytes themselves; a half-width cast decodes to at most float32.
        return 1.0 if self.wire_dtype is None else 4 / self.wire_dtype.itemsize

    def payload_size(self, numel: int, dtype: torch.dtype) -> int:
        return numel * (self.wire_dtype or dtype).itemsize

    def encode(self, flat: torch.Tensor, seed: int) -> torch.Tensor:
        limit = torch.finfo(self.wire_dtype or flat.dtype).max
        if flat.numel():
            # One vectorized pass (min/max propagate NaN); `isfinite` is several times slower.
            low, high = torch.aminmax(flat)
            if not (-limit <= float(low) and float(high) <= limit):
                raise nonfinite_error(flat, self.spec, limit)
        wire = flat if self.wire_dtype is None else flat.to(self.wire_dtype)
        return wire.contiguous().view(torch.uint8)

    def decode(self, payload: torch.Tensor, numel: int, dtype: torch.dtype,
               out: torch.Tensor | None = None) -> torch.Tensor:
        # The payload may view a read-only buffer: the caller always gets its own memory.
        values = payload.view(self.wire_dtype or dtype)
        if out is None:
            return values.to(dtype, copy=True)
        return out.copy_(values)


def _plain(spec: str, wire_dtype: torch.dtype | None) -> Callable[[str], FloatCodec]:
    def factory(params: str) -> FloatCodec:
        if params:
            raise CodecError(f"codec {spec!r} takes no parameters, got {spec + params!r}")
        return FloatCodec(spec, wire_dtype)
    return factory


register("none", _plain("none", None))
register("fp16", _plain("fp16", torch.float16))
register("bf16", _plain("bf16", torch.bfloat16))
