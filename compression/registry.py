"""Codec registry: a codec spec string (`"q4@128~"`) resolves to a codec object.

A spec is a name (`[a-z][a-z0-9]*`) followed by codec-specific parameters (`@128`, `~`, ...). The
registry maps names to factories that parse those parameters, so adding a codec is one new module
and one `register()` call, never an edit to a closed enum. The canonical spec is written into
every frame, which is what makes frames self-describing.
"""
from __future__ import annotations

import functools
import re
from typing import Callable, Protocol

import torch

from compression.errors import CodecError

__all__ = ["Codec", "register", "resolve", "available"]

_NAME = re.compile(r"[a-z][a-z0-9]*")
MAX_SPEC_LEN = 48


class Codec(Protocol):
    """A stateless codec over flat float tensors.

    `spec` is the canonical spec string written into frames; resolving it again gives an equal
    codec. `payload_size` must be exact and cheap: decode checks it before allocating anything.
    `max_ratio` bounds the decoded bytes (numel x itemsize, up to float32's 4) per payload byte of
    any frame the codec makes; decode refuses frames that claim more, so it must hold for every
    numel (derive it from `payload_size`, and keep it small: parse away parameters that are not).
    """

    @property
    def spec(self) -> str: ...

    @property
    def max_ratio(self) -> float: ...

    def payload_size(self, numel: int, dtype: torch.dtype) -> int: ...

    def encode(self, flat: torch.Tensor, seed: int) -> torch.Tensor | list[torch.Tensor]:
        """The payload of a flat tensor as 1-D uint8 tensors (any device), written back to back.

        Raises CodecError for values it cannot represent (NaN/inf).
        """
        ...

    def decode(self, payload: torch.Tensor, numel: int, dtype: torch.dtype,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """`numel` values of `dtype` from a length-checked uint8 payload, flat, into `out` if given.

        `payload` may view a read-only buffer: never write into it, never return it uncopied.
        """
        ...


Factory = Callable[[str], Codec]
_FACTORIES: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    """Make `name` (plus whatever parameters `factory` parses) a codec spec.

    `factory(params)` gets the text after the name (`"@128~"` for `"q4@128~"`, `""` for `"q4"`)
    and returns a codec, or raises `CodecError` naming the bad parameter.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"codec name {name!r} must match [a-z][a-z0-9]*")
    if name in _FACTORIES:
        raise ValueError(f"codec name {name!r} is already registered")
    _FACTORIES[name] = factory


def available() -> list[str]:
    """The registered codec names (parameters such as `@128` or `~` are not listed)."""
    _load_builtin()
    return sorted(_FACTORIES)


def resolve(spec: str) -> Codec:
    """The codec for a spec string; cached, so per-call cost is a dict lookup."""
    if not isinstance(spec, str):  # checked before the cache, which would choke on a list
        raise CodecError(f"codec must be a string such as 'q4', got {type(spec).__name__}")
    return _resolve(spec)


@functools.lru_cache(maxsize=256)
def _resolve(spec: str) -> Codec:
    _load_builtin()
    match = _NAME.match(spec)
    if match is None or len(spec) > MAX_SPEC_LEN:
        raise CodecError(f"malformed codec spec {spec[:MAX_SPEC_LEN + 8]!r}; expected e.g. 'q4', 'q4@128', 'q3~'")
    name, params = match.group(), spec[match.end():]
    factory = _FACTORIES.get(name)
    if factory is None:
        raise CodecError(f"unknown codec {name!r}; available: {', '.join(sorted(_FACTORIES))}")
    codec = factory(params)
    if len(codec.spec) > MAX_SPEC_LEN:
        raise CodecError(f"codec spec {codec.spec!r} is longer than {MAX_SPEC_LEN} characters")
    return codec


@functools.cache
def _load_builtin() -> None:
    # The built-in codecs register themselves on import; done lazily so importing the registry
    # alone has no side effects and a codec module can import the registry without a cycle.
    from compression import cocktail, floats, quantize  # noqa: F401
