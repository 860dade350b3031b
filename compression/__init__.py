"""Codecs and the self-describing wire format. Pure tensor math: no sockets, no asyncio.

    frame = compression.encode(tensor, "q4", seed=step)   # bytes, self-describing
    tensor2 = compression.decode(frame)                   # same dtype and shape (CPU)
    compression.decode(frame, out=buffer)                 # into a reused buffer (fastest)
    compression.decode(frame, codec="q4", shape=(4, 5))   # a receiver's expectations, checked first

Stateless codecs are named by spec strings (`available()` lists the names): `none`, `fp16`,
`bf16`, `q1`..`q8` (`q4@128` block size, `q4~` round to nearest) and `cocktail` (CocktailSGD's
sparsifier). Stateful compression lives in small objects owned by the link that uses them:
`ErrorFeedback` (any codec, one residual per key; `ErrorFeedback("cocktail")` is CocktailSGD)
and `ActivationDelta` (AQ-SGD, m per sample id). Large tensors (>= 65536 values) run compiled
kernels after a one-time compilation (`warm_up(codecs)` does it ahead); `set_fused(False)` keeps a
process on the eager path.
A new codec is one module calling `register(name, factory)`. `resolve(spec)` is the one place a
codec name is validated (CodecError names what is wrong); `frame_size` and `bits_per_value` give
exact wire sizes without encoding anything, for cost models and timeouts.
Decoding never amplifies: a frame whose tensor exceeds its size times the codec's `max_ratio`
(none 1x, fp16 2x, q1 28x, cocktail <= 256x) is refused from its header, as is one whose codec
or shape differs from what the receiver passed.
"""
from compression.delta import ActivationDelta
from compression.errors import CodecError
from compression.feedback import ErrorFeedback
from compression.frame import FrameInfo, bits_per_value, decode, describe, encode, frame_size
from compression.fused import set_fused
from compression.registry import Codec, available, register, resolve
from compression.warmup import warm_up

__all__ = ["encode", "decode", "describe", "frame_size", "bits_per_value", "available", "resolve", "CodecError",
           "ErrorFeedback", "ActivationDelta", "register", "Codec", "FrameInfo", "set_fused",
           "warm_up"]
