"""One way to check what crosses the control plane: msgspec Structs, converted from plain values.

Every record (peer, plan, control) and every value inside one (training spec, timeouts, codecs,
state sources, plan reasons) is a `msgspec.Struct`. Types and bounds are declared on the fields;
rules across fields live in `__post_init__`. `from_builtins` turns a value read from the DHT (or
a JSON file) into the Struct and any violation into `RecordError`, whose message names the field
path, so readers can log and skip a bad record instead of crashing.
"""
from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec

__all__ = ["RecordError", "from_builtins", "to_builtins", "validated", "PositiveInt", "NonNegativeInt", "PositiveFloat",
           "NonNegativeFloat", "FiniteFloat", "Name"]

T = TypeVar("T")

# Bounds that keep a lying or corrupted record from turning into infinite timeouts or a division
# by zero: msgspec rejects NaN for any bounded float, and an upper bound excludes infinity.
_HUGE = 1e30
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0, le=_HUGE)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0, le=_HUGE)]
FiniteFloat = Annotated[float, msgspec.Meta(ge=-_HUGE, le=_HUGE)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class RecordError(ValueError):
    """A record that does not follow the protocol; the message names the field."""


def from_builtins(value: Any, kind: type[T], what: str) -> T:
    """`value` (dicts, lists, numbers, strings) as a `kind` Struct; RecordError naming the field."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as error:
        raise RecordError(f"{what}: {error}") from None


def to_builtins(record: msgspec.Struct) -> dict[str, Any]:
    """A Struct as plain dicts and lists, as the DHT, msgpack and JSON carry it."""
    value = msgspec.to_builtins(record)
    assert isinstance(value, dict)
    return value



def validated(record: T, what: str) -> T:
    """`record` checked as if it had been read from the wire (constructors do not check bounds)."""
    assert isinstance(record, msgspec.Struct)
    return from_builtins(to_builtins(record), type(record), what)
