"""The self-describing frame and the two public verbs, `encode` and `decode`.

Frame layout (little-endian), so a receiver needs no prior agreement with the sender:

    0  magic b"SWCF"        4  format version (u8)   5  dtype code (u8)
    6  ndim (u8, <= 16)     7  spec length L (u8, <= 48)
    8  codec spec, ASCII (e.g. "q4@128~")
    8+L  shape: ndim x u64
    zero padding to a multiple of 8 bytes, so the payload is aligned for fp16/fp32 views
    payload: codec-defined, exactly `codec.payload_size(numel, dtype)` bytes

Decode validates everything it can from the header (magic, version, dtype, spec, shape, exact
payload length) before allocating anything, and refuses a frame whose tensor (numel x itemsize)
exceeds the frame's size times its codec's `max_ratio`: `none` 1x, `fp16`/`bf16` 2x, `q<k>@<b>`
4 / (k/8 + 4/b) (q1 28x, q4 7.8x, q8 3.9x), `cocktail` at most 256x (its parser refuses
parameters beyond that; the default is 155x). A receiver that knows what it expects passes
`codec=` and `shape=`, checked from the header too, so a frame cannot even claim another size.
"""
from __future__ import annotations

import secrets
import struct
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch

from compression.errors import CodecError
from compression.registry import MAX_SPEC_LEN, Codec, resolve

__all__ = ["encode", "decode", "describe", "frame_size", "bits_per_value", "FrameInfo", "MAGIC", "VERSION"]

MAGIC = b"SWCF"
VERSION = 1
MAX_NDIM = 16
_MAX_NUMEL = 1 << 40
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_HEAD = struct.Struct("<4sBBBB")


def encode(tensor: torch.Tensor, codec: str, *, generator: torch.Generator | None = None,
           seed: int | None = None) -> bytes:
    """Compress `tensor` into one self-describing frame.

    codec: `none`, `fp16`, `bf16`, `q1`..`q8` (`q4@128` sets the block, `q4~` rounds to
    nearest) or any registered codec; see `available()`.
    seed / generator: make stochastic rounding reproducible (same seed -> same bytes); without
    either, fresh OS randomness is used. Pass `seed` when several peers must round identically.

        frame = encode(grad, "q4", seed=step)
        grad2 = decode(frame)  # same dtype and shape as grad, on the CPU

    Raises CodecError for an unsupported dtype, NaN/inf values, or an unknown/malformed codec.
    """
    if not isinstance(tensor, torch.Tensor):
        raise CodecError(f"encode expects a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in _DTYPES:
        raise CodecError(f"unsupported dtype {tensor.dtype}; encode takes float32, float16 or bfloat16")
    if tensor.ndim > MAX_NDIM:
        raise CodecError(f"tensor has {tensor.ndim} dimensions; frames carry at most {MAX_NDIM}")
    impl = resolve(codec)
    flat = tensor.detach().reshape(-1)
    payload = impl.encode(flat, _pick_seed(seed, generator))
    spec = impl.spec.encode("ascii")
    head = _HEAD.pack(MAGIC, VERSION, _DTYPES.index(tensor.dtype), tensor.ndim, len(spec)) + spec
    head += struct.pack(f"<{tensor.ndim}Q", *tensor.shape)
    head += bytes(-len(head) % 8)
    parts = payload if isinstance(payload, list) else [payload]
    return b"".join([head, *(part.detach().to("cpu").contiguous().numpy().data for part in parts)])


def frame_size(codec: str, shape: tuple[int, ...] | int, dtype: torch.dtype = torch.float32) -> int:
    """Exact bytes of the frame `encode` makes for a tensor of `shape` (header, padding, payload).

    Pure arithmetic, no allocation, so cost models can price a 1e9-value gradient: the scheduler,
    the coordinator's timeouts and the simulator all size messages with it. Raises CodecError for
    what `encode` would refuse (codec, dtype, more than MAX_NDIM dimensions), or a negative size.
    """
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    impl = resolve(codec)
    if dtype not in _DTYPES:
        raise CodecError(f"unsupported dtype {dtype}; frames carry float32, float16 or bfloat16")
    if len(dims) > MAX_NDIM or any(size < 0 for size in dims):
        raise CodecError(f"no frame holds shape {dims}: sizes must be >= 0, at most {MAX_NDIM} dimensions")
    numel = 1
    for size in dims:
        numel *= size
    header = _HEAD.size + len(impl.spec) + 8 * len(dims)
    return header + -header % 8 + impl.payload_size(numel, dtype)


def bits_per_value(codec: str, numel: int = 1 << 20) -> float:
    """Wire bits per value of a `numel`-value float32 tensor (scales and header included)."""
    if numel <= 0:
        raise CodecError(f"bits_per_value needs a positive numel, got {numel}")
    return 8 * frame_size(codec, numel) / numel


class FrameInfo(NamedTuple):
    """What a frame's header says; `payload_at` is where the codec's bytes begin."""

    codec: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    numel: int
    payload_at: int


def describe(data: bytes | bytearray | memoryview) -> FrameInfo:
    """Read and fully validate a frame's header without decoding its payload (cheap)."""
    return _parse(_byte_view(data))[0]


def decode(data: bytes | bytearray | memoryview, *, device: torch.device | str | None = None,
           out: torch.Tensor | None = None, codec: str | None = None, shape: Sequence[int] | None = None,
           max_ratio: float | None = None) -> torch.Tensor:
    """The tensor a frame carries, with the sender's dtype and shape.

    device: where to rebuild it (default CPU); decoding on the GPU moves only the compressed
    bytes across PCIe. out: a contiguous tensor of the frame's dtype and shape to decode into
    (returned); reusing one avoids the page faults of a fresh large allocation every call.
    codec / shape: what the receiver expects (the plan's codec, in any spelling that resolves to
    the same spec; the exact shape): checked from the header, before anything is allocated.
    max_ratio: the most decoded bytes per frame byte to accept, instead of the codec's own
    `max_ratio` (the best any legitimate frame of it achieves).
    Raises CodecError for any truncated, corrupted, unknown or unexpected frame, an `out` that
    does not fit, or a decode that fails for lack of memory.
    """
    view = _byte_view(data)
    info, impl = _parse(view)
    if codec is not None and info.codec != resolve(codec).spec:
        raise CodecError(f"expected a {resolve(codec).spec!r} frame, but the frame carries codec {info.codec!r}")
    if shape is not None and _as_shape(shape) != info.shape:
        raise CodecError(f"expected shape {_as_shape(shape)}, but the frame carries shape {info.shape}")
    _check_ratio(info, impl, len(view), max_ratio)
    if out is not None:
        if out.shape != info.shape or out.dtype != info.dtype or not out.is_contiguous():
            raise CodecError(f"out is {out.dtype} {tuple(out.shape)}, but the frame holds {info.dtype} "
                             f"{info.shape}; out must match and be contiguous")
        device = out.device
    payload = _as_tensor(view, info.payload_at, len(view) - info.payload_at)
    try:
        if device is not None:
            payload = payload.to(device)
        flat = impl.decode(payload, info.numel, info.dtype, None if out is None else out.view(-1))
    except (RuntimeError, MemoryError) as error:  # torch's allocation failures (OutOfMemoryError too)
        raise CodecError(f"decoding a {info.codec!r} frame of {info.dtype} {info.shape} failed "
                         f"({type(error).__name__}: {str(error)[:200]})") from error
    return out if out is not None else flat.view(info.shape)


def _as_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(int(size) for size in shape)
    except (TypeError, ValueError):
        raise CodecError(f"shape must be a sequence of ints, got {shape!r}") from None


def _check_ratio(info: FrameInfo, impl: Codec, frame_bytes: int, max_ratio: float | None) -> None:
    """Refuse a frame that claims more decoded bytes than its size allows (see the module docstring)."""
    limit = impl.max_ratio if max_ratio is None else max_ratio
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        raise CodecError(f"max_ratio must be a positive number, got {limit!r}")
    decoded = info.numel * info.dtype.itemsize
    if decoded > limit * frame_bytes:
        raise CodecError(f"frame of {frame_bytes} bytes claims {info.dtype} {info.shape} ({decoded} bytes, "
                         f"{decoded / frame_bytes:.0f}x), beyond the {limit:g}x that codec {info.codec!r} allows "
                         "(corrupted or hostile frame)")


def _parse(view: memoryview) -> tuple[FrameInfo, Codec]:
    if len(view) < _HEAD.size:
        raise CodecError(f"frame is {len(view)} bytes, shorter than the {_HEAD.size}-byte header")
    magic, version, dtype_code, ndim, spec_len = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise CodecError(f"not a swarm compression frame (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise CodecError(f"frame format version {version} is not supported (this build reads {VERSION}); "
                         "upgrade the older peer")
    if dtype_code >= len(_DTYPES):
        raise CodecError(f"frame has unknown dtype code {dtype_code}")
    if ndim > MAX_NDIM or not 1 <= spec_len <= MAX_SPEC_LEN:
        raise CodecError(f"frame header is corrupted (ndim {ndim}, codec spec length {spec_len})")
    shape_at = _HEAD.size + spec_len
    payload_at = shape_at + 8 * ndim + (-(shape_at + 8 * ndim) % 8)
    if len(view) < payload_at:
        raise CodecError(f"frame truncated inside its header ({len(view)} < {payload_at} bytes)")
    try:
        spec = bytes(view[_HEAD.size:shape_at]).decode("ascii")
    except UnicodeDecodeError:
        raise CodecError("frame's codec spec is not ASCII (corrupted frame)") from None
    impl = resolve(spec)
    if impl.spec != spec:
        raise CodecError(f"frame's codec spec {spec!r} is not canonical (expected {impl.spec!r})")
    shape = struct.unpack_from(f"<{ndim}Q", view, shape_at)
    if any(view[shape_at + 8 * ndim:payload_at]):
        raise CodecError("frame header padding is not zero (corrupted frame)")
    numel = 1
    for size in shape:
        numel *= size
        if numel > _MAX_NUMEL or size > _MAX_NUMEL:
            raise CodecError(f"frame claims shape {shape}, more than {_MAX_NUMEL} values (corrupted frame)")
    dtype = _DTYPES[dtype_code]
    expected = impl.payload_size(numel, dtype)
    if len(view) - payload_at != expected:
        raise CodecError(f"frame payload is {len(view) - payload_at} bytes but codec {spec!r} with shape "
                         f"{tuple(shape)} needs {expected} (truncated or corrupted frame)")
    return FrameInfo(spec, dtype, tuple(shape), numel, payload_at), impl


def _pick_seed(seed: int | None, generator: torch.Generator | None) -> int:
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise CodecError(f"seed must be an int, got {type(seed).__name__}")
        return seed
    if generator is not None:
        return int(torch.randint(0, 1 << 62, (1,), generator=generator, device=generator.device).item())
    return secrets.randbits(62)


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    try:
        view = memoryview(data)
    except TypeError:
        raise CodecError(f"decode expects bytes, bytearray or memoryview, got {type(data).__name__}") from None
    if view.ndim != 1 or view.itemsize != 1:
        if not view.c_contiguous:
            raise CodecError("decode needs a contiguous buffer")
        view = view.cast("B")
    return view


def _as_tensor(view: memoryview, offset: int, count: int) -> torch.Tensor:
    if count == 0:
        return torch.empty(0, dtype=torch.uint8)
    with warnings.catch_warnings():
        # Frames usually arrive as read-only bytes; codecs never write into their payload.
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(view, dtype=torch.uint8, count=count, offset=offset)
