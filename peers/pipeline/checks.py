"""What crosses a link is checked on both ends: a neighbour's message that does not decode or holds
NaN/inf is that neighbour's fault (`BadMessage`), values of this worker's own that do not encode
are its own (`NonFiniteStep`, nothing sent)."""
from __future__ import annotations

from collections.abc import Callable

import torch

import compression

from ..dataplane.transport import BadMessage

__all__ = ["NonFiniteStep", "received", "sendable"]


class NonFiniteStep(RuntimeError):
    """This worker's step diverged: its loss, or activations or gradients it was about to send,
    hold NaN or inf. Raised before any of them is sent and before the optimizer runs; the step
    fails like a timeout (the live peer reports it, the coordinator re-plans, every peer discards)."""


def received(sender: str, what: str, decode: Callable[[], torch.Tensor], *, check: bool = True) -> torch.Tensor:
    """`decode()` of a neighbour's message, or BadMessage blaming `sender`: "malformed" when it
    fails (CodecError is a ValueError; torch raises RuntimeError), "nonfinite" for NaN/inf values."""
    try:
        tensor = decode()
    except (ValueError, RuntimeError, OverflowError) as error:
        raise BadMessage(sender, "malformed", f"{what}: {error}") from error
    if check and not bool(torch.isfinite(tensor).all()):
        raise BadMessage(sender, "nonfinite", f"{what} hold NaN or inf")
    return tensor


def sendable(encode: Callable[[], bytes], tensor: torch.Tensor, what: str) -> bytes:
    """`encode()` of what this worker sends; NonFiniteStep (nothing sent) when NaN/inf made it fail."""
    try:
        return encode()
    except compression.CodecError as error:
        if not bool(torch.isfinite(tensor).all()):
            raise NonFiniteStep(f"{what} hold NaN or inf; not sent, the step is aborted") from error
        raise
