"""The data plane's frame format: one msgpack header frame plus one raw payload frame.

A message on a zmq link is two frames. The header is a small msgpack array

    [WIRE_VERSION, kind, plan_version, step, index, sender, sample_ids, held_us]

(`held_us` may be left out or nil: only responses carry it, see `peers.dataplane.meter`)

and the payload (a compression frame, or a probe/state-transfer body) travels untouched as its own
zmq frame, so a multi-megabyte tensor is never copied into or out of a container format. The
receiver validates everything before trusting it: part count, header size, msgpack syntax, field
types and ranges, and the payload size limit. Anything wrong raises `WireError` naming the field,
so a transport can count and drop garbage instead of crashing.

Kinds in `CONTROL_KINDS` are answered by the transport itself (probes, reachability checks, state
transfer, the step channel between peers and coordinator) and are exempt from the plan-version
check: a newcomer does not know the plan yet. Their bodies are the msgspec Structs below; their
constraints are the whole validation of a body (a record inside is checked by its own reader).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar, get_args, get_type_hints

import msgspec

from peers.dataplane.transport import Message

__all__ = [
    "WIRE_VERSION", "MAX_HEADER_BYTES", "DEFAULT_MAX_MESSAGE_BYTES", "MAX_CHUNK_BYTES", "CONTROL_KINDS",
    "TRAINING_KINDS", "ACT_KIND", "GRAD_KIND", "REDUCE_KIND", "GATHER_KIND",
    "PING", "PONG", "REACH_REQUEST", "REACH_RESULT", "STATE_REQUEST", "STATE_META", "STATE_CHUNK",
    "STATE_ERROR", "STEP_REPORT", "STEP_CONTROL", "StepReportBody", "StepControlBody",
    "ReachRequestBody", "ReachResultBody", "StateRequestBody", "StateMetaBody", "StateErrorBody",
    "WireError", "pack", "unpack", "pack_body", "unpack_body",
]

WIRE_VERSION = 1
# Headers carry at most a micro-batch of sample ids; 256 KiB holds ~28k of them.
MAX_HEADER_BYTES = 256 * 1024
# Payload limit per message unless a transport is told otherwise (large states travel in chunks).
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# The largest state chunk a donor may announce: a fetching client bounds each received frame by it.
MAX_CHUNK_BYTES = 64 * 1024 * 1024

# The training traffic: forward activations, activation gradients, and the all-reduce's two phases.
ACT_KIND, GRAD_KIND = "act", "grad"
REDUCE_KIND, GATHER_KIND = "ar-reduce", "ar-gather"
TRAINING_KINDS = frozenset({ACT_KIND, GRAD_KIND, REDUCE_KIND, GATHER_KIND})

PING, PONG = "ping", "pong"
REACH_REQUEST, REACH_RESULT = "reach_request", "reach_result"
STATE_REQUEST, STATE_META, STATE_CHUNK, STATE_ERROR = "state_request", "state_meta", "state_chunk", "state_error"
# The step channel (`peers.step_channel`): a peer's signed record after each step it prepares, and
# the coordinator's control record (and new plan) pushed back on the connection the peer dialed.
STEP_REPORT, STEP_CONTROL = "step_report", "step_control"
CONTROL_KINDS = frozenset({PING, PONG, REACH_REQUEST, REACH_RESULT,
                           STATE_REQUEST, STATE_META, STATE_CHUNK, STATE_ERROR, STEP_REPORT, STEP_CONTROL})

_MAX_KIND_CHARS = 64
_MAX_SENDER_CHARS = 256
_MAX_ADDRESS_CHARS = 300
_MAX_REASON_CHARS = 4096

# Each constraint's description is what a `WireError` says when a header field breaks it.
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1, description="a 64-bit integer")]
_NonNegative = Annotated[int, msgspec.Meta(ge=0, description=">= 0")]


class WireError(ValueError):
    """A frame that is not a valid data-plane message; the message says which part is wrong."""


class _Header(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """The header array, field by field; the order is the wire format."""

    version: int
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_KIND_CHARS,
                                      description=f"1..{_MAX_KIND_CHARS} characters")]
    plan_version: _NonNegative
    step: _Int64
    index: _Int64
    sender: Annotated[str, msgspec.Meta(max_length=_MAX_SENDER_CHARS,
                                        description=f"at most {_MAX_SENDER_CHARS} characters")]
    sample_ids: tuple[_Int64, ...]
    held_us: _NonNegative | None = None


class ReachRequestBody(msgspec.Struct, frozen=True, kw_only=True):
    """reach_request: "probe `address` for me, spending at most `timeout` seconds".

    `key`: the curve public key (z85) of the endpoint at `address`, so that a peer with curve keys
    dials it as a curve client; None in an open swarm.
    """

    address: Annotated[str, msgspec.Meta(max_length=_MAX_ADDRESS_CHARS)]
    timeout: Annotated[float, msgspec.Meta(ge=0)]
    key: Annotated[str, msgspec.Meta(min_length=40, max_length=40)] | None = None


class ReachResultBody(msgspec.Struct, frozen=True, kw_only=True):
    """reach_result: the probe's round trip in seconds (None: no answer), or `busy` (ask again)."""

    rtt: Annotated[float, msgspec.Meta(ge=0)] | None = None
    busy: bool = False


class StateRequestBody(msgspec.Struct, frozen=True, kw_only=True):
    """state_request: chunk -1 asks for the metadata, chunk i >= 0 for chunk i of blob `serial`."""

    stage: _NonNegative
    chunk: Annotated[int, msgspec.Meta(ge=-1)]
    serial: _NonNegative | None = None


class StateMetaBody(msgspec.Struct, frozen=True, kw_only=True):
    """state_meta: what the donor serves for `stage` now, so the client can plan and check it."""

    stage: _NonNegative
    serial: _NonNegative
    bytes: _NonNegative
    chunks: Annotated[int, msgspec.Meta(ge=1)]
    chunk_bytes: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNK_BYTES)]
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


class StateErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """state_error: why the donor cannot serve; `retry` when fetching again from it may work."""

    error: Annotated[str, msgspec.Meta(max_length=_MAX_REASON_CHARS)]
    retry: bool = False


class StepReportBody(msgspec.Struct, frozen=True, kw_only=True):
    """step_report: the peer's record (msgpack of its wire form), signed by its DHT key.

    `owner` is the key's `[owner:...]` marker, `signature` its signature of `record`: the
    coordinator takes the report only from the key the name is bound to, so a forged report cannot
    commit a step for a peer that has not prepared it, curve or not.
    """

    record: Annotated[bytes, msgspec.Meta(max_length=64 * 1024)]
    owner: Annotated[bytes, msgspec.Meta(max_length=4096)]
    signature: Annotated[bytes, msgspec.Meta(max_length=4096)]


class StepControlBody(msgspec.Struct, frozen=True, kw_only=True):
    """step_control: the control record (msgpack of its wire form) and, when it names a plan this peer
    has not been sent yet, that plan; the peer reads both exactly as it reads them from the DHT."""

    control: Annotated[bytes, msgspec.Meta(max_length=1024 * 1024)]
    plan: Annotated[bytes, msgspec.Meta(max_length=8 * 1024 * 1024)] = b""


_Body = TypeVar("_Body", bound=msgspec.Struct)
_BODY_TYPES = (ReachRequestBody, ReachResultBody, StateRequestBody, StateMetaBody, StateErrorBody, StepReportBody,
               StepControlBody)
_ENCODER = msgspec.msgpack.Encoder()
_HEADER_DECODER = msgspec.msgpack.Decoder(_Header)
_BODY_DECODERS: dict[type[msgspec.Struct], msgspec.msgpack.Decoder[Any]] = {
    body_type: msgspec.msgpack.Decoder(body_type) for body_type in _BODY_TYPES}
_HEADER_FIELDS = _Header.__struct_fields__
_HEADER_LIMITS = {name: meta.description for name, hint in get_type_hints(_Header, include_extras=True).items()
                  for part in (hint, *get_args(hint))  # `held_us` is optional: its constraint is inside the union
                  for meta in getattr(part, "__metadata__", ()) if isinstance(meta, msgspec.Meta)}
_AT_FIELD = re.compile(r"(?P<problem>.+) - at `\$\[(?P<field>\d+)\](?P<item>.*)`")
_TYPE_MISMATCH = re.compile(r"Expected `(?P<expected>[\w |]+)`, got `(?P<got>\w+)`")


def pack(message: Message, *, sender: str, plan_version: int) -> list[bytes | memoryview]:
    """Frames to hand to `send_multipart(copy=False)`: the msgpack header and the payload as is.

    `sender` comes from the sending transport (the source of truth), not from the message;
    `plan_version` is the one the message's plan stamped on it (see `PlanLink`). A read-only
    payload (bytes) is passed through without a copy; a writable buffer is copied once, because
    zmq sends it later and the caller may reuse it meanwhile.
    """
    payload = message.payload
    if isinstance(payload, bytearray) or (isinstance(payload, memoryview) and not payload.readonly):
        payload = bytes(payload)
    elif not isinstance(payload, (bytes, memoryview)):
        raise TypeError(f"message payload must be bytes, bytearray or memoryview, got {type(payload).__name__}")
    header: tuple[Any, ...] = (WIRE_VERSION, message.kind, plan_version, message.step, message.index, sender,
                               tuple(message.sample_ids))
    if message.held_us is not None:  # only responses carry it: every other header stays 7 fields
        header += (message.held_us,)
    return [_ENCODER.encode(header), payload]


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
    try:
        header = _HEADER_DECODER.decode(header_view)
    except msgspec.ValidationError as error:
        raise _header_error(error) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise WireError(f"header is not valid msgpack: {error}") from None
    if header.version != WIRE_VERSION:
        raise WireError(f"wire version {header.version!r} is not {WIRE_VERSION}: peer runs another release")
    return Message(kind=header.kind, step=header.step, index=header.index, payload=payload.toreadonly(),
                   sender=header.sender, plan_version=header.plan_version, sample_ids=header.sample_ids,
                   held_us=header.held_us)


def pack_body(body: msgspec.Struct) -> bytes:
    """Encode a control-message body (one of the `*Body` Structs) as a msgpack map."""
    return _ENCODER.encode(body)


def unpack_body(data: Any, body_type: type[_Body]) -> _Body:
    """Decode a control-message body into `body_type` (a `*Body` Struct), checking types and constraints.

    Raises `WireError` naming the offending field for anything that does not fit.
    """
    try:
        body: _Body = _BODY_DECODERS[body_type].decode(data)
    except msgspec.ValidationError as error:
        raise WireError(f"{body_type.__name__} is invalid: {error}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise WireError(f"{body_type.__name__} is not valid msgpack: {error}") from None
    return body


def _header_error(error: msgspec.ValidationError) -> WireError:
    """msgspec's complaint about a header, said in terms of the header's field names."""
    at = _AT_FIELD.fullmatch(str(error))
    if at is None:
        return WireError(f"header must be a msgpack array of 7 or 8 fields [{', '.join(_HEADER_FIELDS)}]: {error}")
    name = _HEADER_FIELDS[int(at["field"])]
    if at["item"]:
        return WireError(f"header field {name!r} must hold only 64-bit integers: {at['problem']} at {at['item']}")
    mismatch = _TYPE_MISMATCH.fullmatch(at["problem"])
    if mismatch is not None:
        expected = "list" if mismatch["expected"] == "array" else mismatch["expected"].replace(" | null", " or nil")
        return WireError(f"header field {name!r} must be {expected}, got {mismatch['got']}")
    return WireError(f"header field {name!r} must be {_HEADER_LIMITS[name]}")
