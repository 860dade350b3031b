"""Codecs and the self-describing wire format. Pure tensor math: no sockets, no asyncio.

    frame = compression.encode(tensor, "q4")      # bytes, self-describing
    tensor2 = compression.decode(frame)           # same dtype and shape

Stateless codecs are named by spec strings (`available()` lists the names): `none`, `fp16`,
`bf16`, `q1`..`q8` (`q4@128` block size, `q4~` round to nearest), `cocktail`. Stateful
compression lives in small objects owned by the link that uses them: `ErrorFeedback` (any codec,
residual per key) and `ActivationDelta` (AQ-SGD per sample id).
"""
from compression.delta import ActivationDelta
from compression.errors import CodecError
from compression.feedback import ErrorFeedback
from compression.frame import FrameInfo, decode, describe, encode
from compression.fused import set_fused
from compression.registry import Codec, available, register

__all__ = ["encode", "decode", "available", "CodecError", "ErrorFeedback", "ActivationDelta",
           "register", "Codec", "set_fused", "describe", "FrameInfo"]
