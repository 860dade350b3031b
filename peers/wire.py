"""The data plane's frame format: one msgpack header frame plus one raw payload frame.

A message on a zmq link is two frames. The header is a small msgpack array

    [WIRE_VERSION, kind, plan_version, step, index, sender, sample_ids]

and the payload (a compression frame, or a probe/state-transfer body) travels untouched as its own
zmq frame, so a multi-megabyte tensor is never copied into or out of a container format. The
receiver validates everything before trusting it: part count, header size, msgpack syntax, field
types and the payload size limit. Anything wrong raises `WireError` naming the field, so a
transport can count and drop garbage instead of crashing.

Kinds in `CONTROL_KINDS` are answered by the transport itself (probes, reachability checks, state
transfer) and are exempt from the plan-version check: a newcomer does not know the plan yet.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from peers.transport import Message

__all__ = [
    "WIRE_VERSION", "MAX_HEADER_BYTES", "DEFAULT_MAX_MESSAGE_BYTES", "CONTROL_KINDS", "TRAINING_KINDS",
    "ACT_KIND", "GRAD_KIND", "REDUCE_KIND", "GATHER_KIND",
    "PING", "PONG", "REACH_REQUEST", "REACH_RESULT", "STATE_REQUEST", "STATE_META", "STATE_CHUNK",
    "STATE_ERROR", "WireError", "pack", "unpack", "pack_body", "unpack_body",
]

WIRE_VERSION = 1
# Headers carry at most a micro-batch of sample ids; 256 KiB holds ~28k of them.
MAX_HEADER_BYTES = 256 * 1024
# Payload limit per message unless a transport is told otherwise (large states travel in chunks).
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

# The training traffic: forward activations, activation gradients, and the all-reduce's two phases.
ACT_KIND, GRAD_KIND = "act", "grad"
REDUCE_KIND, GATHER_KIND = "ar-reduce", "ar-gather"
TRAINING_KINDS = frozenset({ACT_KIND, GRAD_KIND, REDUCE_KIND, GATHER_KIND})

PING, PONG = "ping", "pong"
REACH_REQUEST, REACH_RESULT = "reach_request", "reach_result"
STATE_REQUEST, STATE_META, STATE_CHUNK, STATE_ERROR = "state_request", "state_meta", "state_chunk", "state_error"
CONTROL_KINDS = frozenset({PING, PONG, REACH_REQUEST, REACH_RESULT,
                           STATE_REQUEST, STATE_META, STATE_CHUNK, STATE_ERROR})

_MAX_KIND_CHARS = 64
_MAX_SENDER_CHARS = 256
_INT64 = (-(2**63), 2**63 - 1)


class WireError(ValueError):
    """A frame that is not a valid data-plane message; the message says which part is wrong."""


def pack(message: Message, *, sender: str, plan_version: int) -> list[bytes | memoryview]:
    """Frames to hand to `send_multipart(copy=False)`: the msgpack header and the payload as is.

    `sender` and `plan_version` come from the sending transport (the source of truth), not from
    the message. A read-only payload (bytes) is passed through without a copy; a writable buffer
    is copied once, because zmq sends it later and the caller may reuse it meanwhile.
    """
    payload = message.payload
    if isinstance(payload, bytearray) or (isinstance(payload, memoryview) and not payload.readonly):
        payload = bytes(payload)
    elif not isinstance(payload, (bytes, memoryview)):
        raise TypeError(f"message payload must be bytes, bytearray or memoryview, got {type(payload).__name__}")
    header = msgpack.packb([WIRE_VERSION, message.kind, plan_version, message.step, message.index,
                            sender, list(message.sample_ids)], use_bin_type=True)
    return [header, payload]


def unpack(frames: Sequence[Any], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Parse [header, payload] frames (bytes, memoryviews or zmq.Frame) into a `Message`.

    The payload stays a read-only memoryview over the received frame (no copy). Raises
    `WireError` for anything malformed or oversized.
    """
    if len(frames) != 2:
        raise WireError(f"expected 2 frames (header, payload), got {len(frames)}")
    header_view, payload = memoryview(frames[0]), memoryview(frames[1])
    if header_view.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"header of {header_view.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    if payload.nbytes > max_message_bytes:
        raise WireError(f"payload of {payload.nbytes} bytes exceeds max_message_bytes {max_message_bytes}")
    fields = _decode_header(header_view)
    version, kind, plan_version, step, index, sender, sample_ids = fields
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version!r} is not {WIRE_VERSION}: peer runs another release")
    if not kind or len(kind) > _MAX_KIND_CHARS:
        raise WireError(f"field 'kind' must be 1..{_MAX_KIND_CHARS} characters, got {len(kind)}")
    if len(sender) > _MAX_SENDER_CHARS:
        raise WireError(f"field 'sender' longer than {_MAX_SENDER_CHARS} characters")
    if plan_version < 0:
        raise WireError(f"field 'plan_version' must be >= 0, got {plan_version}")
    if payload.readonly is False:
        payload = payload.toreadonly()
    return Message(kind=kind, step=step, index=index, payload=payload, sender=sender,
                   plan_version=plan_version, sample_ids=tuple(sample_ids))


def pack_body(body: dict[str, Any]) -> bytes:
    """Encode a small control-message body (probe results, state metadata)."""
    return msgpack.packb(body, use_bin_type=True)


def unpack_body(data: Any, required: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """Decode a control-message body and check that each required key has the required type."""
    try:
        body = msgpack.unpackb(memoryview(data), raw=False, max_bin_len=0, max_ext_len=0,
                               max_array_len=64, max_map_len=64, max_str_len=4096)
    except Exception as error:  # msgpack raises many unrelated types on garbage
        raise WireError(f"control body is not valid msgpack: {error}") from None
    if not isinstance(body, dict):
        raise WireError(f"control body must be a map, got {type(body).__name__}")
    for key, expected in required.items():
        value = body.get(key)
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
            raise WireError(f"control body field {key!r} has type {type(value).__name__}")
    return body


def _decode_header(data: memoryview) -> tuple[int, str, int, int, int, str, list[int]]:
    try:
        fields = msgpack.unpackb(data, raw=False, max_bin_len=256, max_ext_len=0, max_map_len=16,
                                 max_str_len=MAX_HEADER_BYTES, max_array_len=MAX_HEADER_BYTES)
    except Exception as error:  # msgpack raises ValueError, ExtraData, UnicodeDecodeError, ...
        raise WireError(f"header is not valid msgpack: {error}") from None
    if not isinstance(fields, list) or len(fields) != 7:
        raise WireError("header must be a msgpack array of 7 fields "
                        "[version, kind, plan_version, step, index, sender, sample_ids]")
    names = ("version", "kind", "plan_version", "step", "index", "sender", "sample_ids")
    types = (int, str, int, int, int, str, list)
    for name, expected, value in zip(names, types, fields):
        if type(value) is not expected:  # `type is`: rejects bool where int is expected
            raise WireError(f"header field {name!r} must be {expected.__name__}, got {type(value).__name__}")
    if not all(type(sample) is int and _INT64[0] <= sample <= _INT64[1] for sample in fields[6]):
        raise WireError("header field 'sample_ids' must hold only 64-bit integers")
    return tuple(fields)  # type: ignore[return-value]
