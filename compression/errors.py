"""The one exception every bad input to the compression layer raises.

A `ValueError` subclass so callers that already treat bad values generically keep working, while
the data plane can catch exactly this and drop or reject a frame without guessing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotation only; `nonfinite_error` imports torch when it runs
    import torch

__all__ = ["CodecError"]


class CodecError(ValueError):
    """A tensor or frame the compression layer cannot handle; the message says what and why."""


def nonfinite_error(values: torch.Tensor, spec: str, limit: float) -> CodecError:
    """The error for a tensor a codec cannot represent: NaN/inf input, or values past `limit`.

    Called only once encoding already failed, so the extra pass over `values` costs nothing on
    the good path.
    """
    import torch

    if not bool(torch.isfinite(values).all()):
        return CodecError(f"codec {spec!r}: input contains NaN or inf; fix the producer (or check for "
                          "a diverged step) before sending")
    return CodecError(f"codec {spec!r}: values too large for its range (|x| must stay below "
                      f"{limit:g}); use codec 'none' or 'bf16'")
