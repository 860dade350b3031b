"""One way to check what crosses the control plane: msgspec Structs, converted from plain values.

Every record (peer, plan, control) and every value inside one (training spec, timeouts, codecs,
state sources, plan reasons) is a `msgspec.Struct`. Types and bounds are declared on the fields;
rules across fields live in `__post_init__`. `from_builtins` turns a value read from the DHT (or
a JSON file) into the Struct and any violation into `RecordError`, whose message names the field
path, so readers can log and skip a bad record instead of crashing.
"""
from __future__ import annotations

import re
import reprlib
from typing import Annotated, Any, TypeVar

import msgspec

__all__ = ["RecordError", "from_builtins", "to_builtins", "validated", "encoded_size", "check_encoded_size",
           "PositiveInt", "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "FiniteFloat", "Name", "PeerName",
           "MAX_NAME_CHARS"]

T = TypeVar("T")
Step = str | int

_LOCATED = re.compile(r"(?P<rule>.*) - at `(?P<path>\$(?:\.\w+|\[\d+\]|\[\.\.\.\])*)`", re.DOTALL)
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]|\[(\.\.\.)\]")
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_MISSING = object()

# Bounds that keep a lying or corrupted record from turning into infinite timeouts or a division
# by zero: msgspec rejects NaN for any bounded float, and an upper bound excludes infinity.
_HUGE = 1e30
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0, le=_HUGE)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0, le=_HUGE)]
FiniteFloat = Annotated[float, msgspec.Meta(ge=-_HUGE, le=_HUGE)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# A peer's own name, tighter than `Name` because a peer record holds up to dozens of them (links,
# suspects) within its byte bound; the default name, HOSTNAME-XXXX, fits (Linux hostnames <= 64).
MAX_NAME_CHARS = 80
PeerName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]


class RecordError(ValueError):
    """A record that does not follow the protocol; the message names the field."""


def from_builtins(value: Any, kind: type[T], what: str, error: type[ValueError] = RecordError) -> T:
    """`value` (dicts, lists, numbers, strings) as a `kind` Struct; a violation raises `error` naming
    `what`, the field path (object keys included) and the offending value:

        peer record: Expected `float` > 0.0, got 0 - at `$.links.p2.bandwidth_gbps`
    """
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as problem:
        raise error(f"{what}: {_explain(str(problem), value, kind)}") from None


def to_builtins(record: msgspec.Struct) -> dict[str, Any]:
    """A Struct as plain dicts and lists, as the DHT, msgpack and JSON carry it."""
    value = msgspec.to_builtins(record)
    assert isinstance(value, dict)
    return value



def encoded_size(value: Any) -> int:
    """Bytes of `value` as msgpack, the encoding hivemind stores DHT values in."""
    return len(msgspec.msgpack.encode(value))


def check_encoded_size(record: msgspec.Struct, limit: int, what: str) -> None:
    """RecordError unless `record` encodes to at most `limit` bytes. Field bounds count characters; this
    catches what they cannot (multi-byte text), so the DHT value holding the record stays bounded."""
    size = encoded_size(record)
    if size > limit:
        raise RecordError(f"{what} encodes to {size} bytes, above its bound of {limit} bytes: shorten its text "
                          "or drop entries")


def validated(record: T, what: str) -> T:
    """`record` checked as if it had been read from the wire (constructors do not check bounds)."""
    assert isinstance(record, msgspec.Struct)
    return from_builtins(to_builtins(record), type(record), what)


def _explain(message: str, data: Any, kind: type[Any]) -> str:
    """msgspec's "rule - at `$.a[...].b`" with the key in place of `[...]` and the value added."""
    located = _LOCATED.fullmatch(message)
    if located is None:
        return message
    steps: list[Step] = []
    for key, index, hidden in _STEP.findall(located["path"]):
        if hidden:
            found = _failing_key(message, data, kind, steps)
            if found is None:
                return message
            steps.append(found)
        else:
            steps.append(key or int(index))
    rule, value = located["rule"], _value_at(data, steps)
    if rule.startswith("Expected") and " got " not in rule and value is not _MISSING:
        rule = f"{rule}, got {_SHORT.repr(value)}"
    return rule + " - at `$" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps) + "`"


def _value_at(data: Any, steps: list[Step]) -> Any:
    value = data
    for step in steps:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


def _failing_key(message: str, data: Any, kind: type[Any], steps: list[Step]) -> str | None:
    """The key of the object at `steps` whose entry alone gives `message` again (msgspec names no keys)."""
    entries = _value_at(data, steps)
    if not isinstance(entries, dict):
        return None
    for key, entry in entries.items():
        try:
            msgspec.convert(_with_entries(data, steps, {key: entry}), kind)
        except msgspec.ValidationError as problem:
            if str(problem) == message:
                return str(key)
    return None


def _with_entries(data: Any, steps: list[Step], entries: dict[Any, Any]) -> Any:
    """A copy of `data` with the object at `steps` replaced by `entries`."""
    if not steps:
        return entries
    head, rest = steps[0], steps[1:]
    if isinstance(data, dict):
        return {**data, head: _with_entries(data[head], rest, entries)}
    items = list(data)
    items[int(head)] = _with_entries(items[int(head)], rest, entries)
    return items
