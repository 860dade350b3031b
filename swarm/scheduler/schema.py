"""How scenario and plan files are checked: msgspec Structs, and errors that name the field.

Every file type is a `Record`, a frozen msgspec Struct that rejects unknown keys. msgspec checks
the types and the `Annotated` constraints below; `__post_init__` checks the rules that span
fields. `convert` (the protocol's `from_builtins`, the one converter for records and files alike)
turns msgspec's error into the caller's own ValueError, names the object key that msgspec writes
as `[...]`, and adds the offending value where msgspec leaves it out, so a message names the
field, the rule and the value:
    scenario: Expected `float` >= 0.0, got -1 - at `$.sites.oregon.latency_ms`
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import msgspec

from peers.protocol import from_builtins

__all__ = ["Record", "Positive", "NonNegative", "Count", "Name", "convert", "load_json"]

T = TypeVar("T")

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]
Name = Annotated[str, msgspec.Meta(min_length=1)]


class Record(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A file's object: unknown keys are errors, and no number may be infinite.

    JSON cannot spell infinity, but a dict handed to `from_dict` can, and msgspec's bounds let
    it through.
    """

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}: must be finite, got {value!r}")


def convert(data: Any, kind: type[T], what: str, error: type[ValueError]) -> T:
    """`data` (decoded JSON) as a `kind`; a problem raises `error` naming `what`, the field and the value."""
    return from_builtins(data, kind, what, error)


def load_json(path: str | Path, what: str, parse: Callable[[Any], T], error: type[ValueError]) -> T:
    """`parse` of the JSON in `path`; any problem raises `error` naming the file."""
    try:
        text = Path(path).read_bytes()
    except OSError as problem:
        raise error(f"cannot read {what} file {path}: {problem.strerror}") from None
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError as problem:
        raise error(f"{path}: not valid JSON ({problem})") from None
    try:
        return parse(data)
    except error as problem:
        raise error(f"{path}: {problem}") from None
