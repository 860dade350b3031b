"""How scenario and plan files are checked: msgspec Structs, and errors that name the field.

Every file type is a `Record`, a frozen msgspec Struct that rejects unknown keys. msgspec checks
the types and the `Annotated` constraints below; `__post_init__` checks the rules that span
fields. `convert` turns msgspec's error into the caller's own ValueError, names the object key
that msgspec writes as `[...]`, and adds the offending value where msgspec leaves it out, so a
message names the field, the rule and the value:
    scenario: Expected `float` >= 0.0, got -1 - at `$.sites.oregon.latency_ms`
"""
from __future__ import annotations

import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import msgspec

__all__ = ["Record", "Positive", "NonNegative", "Count", "Name", "convert", "load_json"]

T = TypeVar("T")

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]
Name = Annotated[str, msgspec.Meta(min_length=1)]

_LOCATED = re.compile(r"(?P<rule>.*) - at `(?P<path>\$(?:\.\w+|\[\d+\]|\[\.\.\.\])*)`", re.DOTALL)
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]|\[(\.\.\.)\]")
Step = str | int
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_MISSING = object()


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
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as problem:
        raise error(f"{what}: {_explain(str(problem), data, kind)}") from None


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
