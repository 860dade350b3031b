"""AQ-SGD activation compression: send Q(a - m(sample)) instead of Q(a), on both ends of a link.

Per training sample both the sender and the receiver keep m(sample). A sample's first visit goes
at full precision (codec `none`) and sets m = a; later visits send Q(a - m) and both sides do
m += Q(a - m); the next stage computes on m. Once training settles, a - m is small and a 3-bit
delta is nearly exact. Gains need repeated samples (multi-epoch fine-tuning); on a single pass
it degenerates to sending the first visit in full.

Memory: `capacity` samples x one activation row each, in `memory_dtype` (default: the
activations' dtype; float16 halves it). Past capacity the least recently used sample is evicted
on both sides alike (both see the same calls in the same order); its next visit is sent in full
again. The frame names every row's sample id, whether it is full or delta, and for a delta how
many updates the sender's m has seen, so a receiver that fell out of step (a lost or aborted
frame, a missed `forget`) raises CodecError instead of computing on a wrong m; `forget` those
samples on the sender (their next visit goes in full, which resets m on both sides).

A receiver checks the two parts' headers before decoding either: first visits must be codec
`none` and deltas this link's codec, each with its rows' count and m's row shape (and, given
`shape=`, the micro-batch shape the receiver expects), so a frame cannot make it decode more.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Any, Iterable, Sequence

import torch

from compression.errors import CodecError
from compression.frame import decode, describe, encode
from compression.registry import resolve

__all__ = ["ActivationDelta"]

_MAGIC = b"SWAD"
_VERSION = 2
_HEAD = struct.Struct("<4sBxxxI")
_LEN = struct.Struct("<Q")


class ActivationDelta:
    """One side (sender or receiver) of one activation link, e.g. stage 0 -> stage 1 forward.

        sender = ActivationDelta("q3", capacity=4096)     # on stage s
        receiver = ActivationDelta("q3", capacity=4096)   # on stage s+1
        frame = sender.encode(sample_ids, activations)    # activations: [batch, ...]
        inputs = receiver.decode(sample_ids, frame)       # m for each row, [batch, ...]

    Set capacity to the number of distinct training samples when it fits in memory (then
    nothing is ever evicted); each sample costs one activation row of `memory_dtype`.
    """

    def __init__(self, codec: str, *, capacity: int = 1024, memory_dtype: torch.dtype | None = None,
                 generator: torch.Generator | None = None) -> None:
        resolve(codec)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise CodecError(f"capacity must be a positive int (samples kept), got {capacity!r}")
        self.codec = codec
        self.capacity = capacity
        self.memory_dtype = memory_dtype
        self._generator = generator
        # None marks a forgotten sample: it keeps its LRU slot, so a side that forgets (the sender,
        # after an aborted step) evicts exactly what the other side evicts.
        self._memory: OrderedDict[int, torch.Tensor | None] = OrderedDict()
        self._updates: dict[int, int] = {}  # how many frames have updated each m (mod 2**32)

    def encode(self, sample_ids: Iterable[int], activations: torch.Tensor, *, seed: int | None = None) -> bytes:
        """The frame for one micro-batch; updates m of every row exactly as `decode` will."""
        if not isinstance(activations, torch.Tensor):
            raise CodecError(f"activations must be a torch.Tensor [batch, ...], got {type(activations).__name__}")
        ids = self._check_ids(sample_ids, activations.shape[0] if activations.ndim else -1)
        acts = activations.detach()
        dtype = self.memory_dtype or acts.dtype
        # m of each row that goes as a delta (m held, same shape); every other row goes in full
        held = {r: m for r, m in enumerate(self._memory.get(i) for i in ids)
                if m is not None and m.shape == acts.shape[1:]}
        fresh = [r not in held for r in range(len(ids))]
        full_rows, delta_rows = _split(fresh)
        full_frame = encode(acts[full_rows], "none") if full_rows else b""
        delta_frame = b""
        updates = {ids[r]: acts[r].to(dtype, copy=True) for r in full_rows}
        if delta_rows:
            memory = torch.stack(list(held.values())).to(acts.device, torch.float32)
            diff = acts[delta_rows].to(torch.float32) - memory
            delta_frame = encode(diff.to(acts.dtype), self.codec, seed=seed, generator=self._generator)
            added = _add_delta(memory, delta_frame, self.codec, dtype)
            updates.update({ids[r]: m for r, m in zip(delta_rows, added, strict=True)})
        counts = [0 if f else self._updates[i] for i, f in zip(ids, fresh, strict=True)]
        self._commit(updates, ids, {ids[r] for r in full_rows})
        return _pack(ids, fresh, counts, full_frame, delta_frame)

    def decode(self, sample_ids: Iterable[int], frame: bytes | memoryview, *,
               device: torch.device | str | None = None, shape: Sequence[int] | None = None) -> torch.Tensor:
        """m for each row of the micro-batch the frame carries, in the sender's dtype.

        shape: the micro-batch shape [batch, ...] the receiver expects, checked from the headers.
        """
        ids = self._check_ids(sample_ids, None)
        sent_ids, fresh, counts, full_frame, delta_frame = _unpack(frame)
        if sent_ids != ids:
            raise CodecError(f"frame carries sample ids {sent_ids[:8]} but the receiver expected "
                             f"{ids[:8]}; the link delivered another micro-batch's frame")
        full_rows, delta_rows = _split(fresh)
        held = [m for m in (self._memory.get(ids[r]) for r in delta_rows) if m is not None]
        if len(held) != len(delta_rows):
            missing = [ids[r] for r in delta_rows if self._memory.get(ids[r]) is None]
            raise CodecError(f"delta frame for samples {missing[:8]} this receiver holds no m for; sender and "
                             "receiver are out of step (they need the same codec, capacity and call order)")
        stale = [i for i, f, c in zip(ids, fresh, counts, strict=True) if not f and self._updates[i] != c]
        if stale:
            raise CodecError(f"delta frame for samples {stale[:8]} was computed on another m than this receiver "
                             "holds (a frame was lost or aborted); sender and receiver are out of step: "
                             "forget() these samples on the sender so their next visit goes in full")
        row_shape = _row_shape(shape, len(ids), held)
        first = full_frame if full_frame is not None else delta_frame
        assert first is not None  # ids is never empty, so _unpack returns at least one part
        out_dtype = describe(first).dtype
        dtype = self.memory_dtype or out_dtype
        # Decode everything first and commit only a fully valid frame: a corrupted frame must not
        # leave this side's m half-updated (out of step with the sender's).
        rows: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        updates: dict[int, torch.Tensor] = {}
        if full_frame is not None:  # one row per flag, shaped like m's rows (or as expected)
            row_shape = describe(full_frame).shape[1:] if row_shape is None else row_shape
            full = decode(full_frame, device=device, codec="none", shape=(len(full_rows), *row_shape))
            for r, row in zip(full_rows, full, strict=True):
                rows[r] = row
                updates[ids[r]] = row.to(dtype, copy=True)
        if delta_frame is not None:
            memory = torch.stack(held)
            target = device if device is not None else memory.device
            added = _add_delta(memory.to(target, torch.float32), delta_frame, self.codec, dtype)
            for r, m in zip(delta_rows, added, strict=True):
                rows[r] = m.to(out_dtype)
                updates[ids[r]] = m
        if len({row.shape for row in rows}) != 1:
            raise CodecError("activation frame mixes rows of different shapes; the sender's rows all share one")
        self._commit(updates, ids, {ids[r] for r in full_rows})
        return torch.stack(rows)

    def forget(self, sample_ids: Iterable[int]) -> None:
        """Drop m for these samples; their next visit is sent in full, which resets m on both sides.

        Enough on the sender alone (e.g. after an aborted step whose frame the receiver may or may
        not have applied). A forgotten sample keeps its place in the eviction order, so the two
        sides keep evicting the same samples.
        """
        for i in sample_ids:
            if int(i) in self._memory:
                self._memory[int(i)] = None
            self._updates.pop(int(i), None)

    def clear(self) -> None:
        """Drop every m (both sides), e.g. when the sending stage's parameters were replaced."""
        self._memory.clear()
        self._updates.clear()

    def state(self) -> dict[str, Any]:
        """A copy of m, the update counts and the eviction order: what a resumed side needs to stay in
        step with its peer. Plain tensors, ints, lists and strings, so weights-only loading accepts it."""
        held = [(i, m) for i, m in self._memory.items() if m is not None]
        return {"codec": self.codec, "capacity": self.capacity, "memory_dtype": str(self.memory_dtype),
                "order": list(self._memory), "held": [i for i, _ in held], "memory": [m.clone() for _, m in held],
                "updates": [self._updates[i] for i, _ in held]}

    def load_state(self, state: dict[str, Any], *, device: torch.device | str | None = None) -> None:
        """Adopt `state()` of a side of a link like this one (same codec, capacity and memory dtype),
        with m on `device` (a checkpoint loads to the CPU; m must sit where new rows will)."""
        mine = {"codec": self.codec, "capacity": self.capacity, "memory_dtype": str(self.memory_dtype)}
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            raise CodecError(f"activation memory state is for {theirs}, this side is {mine}")
        try:
            order, held, memory, updates = (list(state[key]) for key in ("order", "held", "memory", "updates"))
        except (KeyError, TypeError):
            raise CodecError("activation memory state lacks its order, held samples, rows or counts") from None
        if (len(set(order)) != len(order) or len(order) > self.capacity or not set(held) <= set(order)
                or len(set(held)) != len(held) or not len(held) == len(memory) == len(updates)
                or not all(isinstance(m, torch.Tensor) and m.dtype == (self.memory_dtype or m.dtype) for m in memory)
                or not all(isinstance(c, int) and 0 <= c <= 0xFFFFFFFF for c in updates)):
            raise CodecError("activation memory state is inconsistent (order, held samples, memory rows and "
                             "update counts disagree); it is not a state() of an ActivationDelta")
        rows = dict(zip(held, memory, strict=True))
        self._memory = OrderedDict((int(i), rows[i].to(device or rows[i].device, copy=True) if i in rows else None)
                                   for i in order)
        self._updates = {int(i): int(c) for i, c in zip(held, updates, strict=True)}

    def __len__(self) -> int:
        return sum(m is not None for m in self._memory.values())

    def __contains__(self, sample_id: int) -> bool:
        return self._memory.get(int(sample_id)) is not None

    def _commit(self, updates: dict[int, torch.Tensor], ids: list[int], full_ids: set[int]) -> None:
        """Store new m rows, then mark the micro-batch used in row order (both sides do the same,
        so their LRU orders stay equal) and evict the least recently used beyond capacity."""
        if updates and not bool(torch.isfinite(torch.stack(list(updates.values()))).all()):
            raise CodecError(f"activations overflow the {self.memory_dtype} memory of m (|a| too large); "
                             "use memory_dtype=torch.bfloat16 or None")
        for i in updates:  # a full row restarts its count
            self._updates[i] = 1 if i in full_ids else (self._updates[i] + 1) & 0xFFFFFFFF
        self._memory.update(updates)
        for i in ids:
            if i in self._memory:
                self._memory.move_to_end(i)
        while len(self._memory) > self.capacity:
            evicted, _ = self._memory.popitem(last=False)
            self._updates.pop(evicted, None)

    def _check_ids(self, sample_ids: Iterable[int], batch: int | None) -> list[int]:
        if isinstance(sample_ids, torch.Tensor):
            sample_ids = sample_ids.tolist()
        try:
            ids = [int(i) for i in sample_ids]
        except (TypeError, ValueError):
            raise CodecError("sample_ids must be a sequence of ints, one per batch row") from None
        if batch is not None and len(ids) != batch:
            raise CodecError(f"got {len(ids)} sample_ids for {batch} activation rows; activations must be "
                             "shaped [batch, ...] with one sample id per row")
        if not ids:
            raise CodecError("empty micro-batch: an activation frame carries at least one row")
        if len(set(ids)) != len(ids):
            raise CodecError("sample_ids repeat within one micro-batch; each row needs its own sample")
        if len(ids) > self.capacity:
            raise CodecError(f"micro-batch of {len(ids)} samples exceeds capacity {self.capacity}")
        return ids

    @staticmethod
    def shape_of(frame: bytes | memoryview) -> tuple[int, ...]:
        """The micro-batch shape [batch, ...] a frame claims, from its headers alone (cheap)."""
        sent_ids, _, _, full_frame, delta_frame = _unpack(frame)
        first = full_frame if full_frame is not None else delta_frame
        assert first is not None  # _unpack returns at least one part
        claimed = describe(first).shape
        if not claimed:
            raise CodecError("activation frame carries a 0-d part; its rows need a batch dimension")
        return (len(sent_ids), *claimed[1:])


def _row_shape(shape: Sequence[int] | None, batch: int, held: list[torch.Tensor]) -> tuple[int, ...] | None:
    """The row shape every part must have: the expected one, else m's (the delta rows'), else unknown."""
    if shape is not None:
        expected = tuple(int(size) for size in shape)
        if not expected or expected[0] != batch:
            raise CodecError(f"expected shape {expected}, but the frame carries {batch} rows")
        if held and tuple(held[0].shape) != expected[1:]:
            raise CodecError(f"expected rows of shape {expected[1:]}, but this receiver's m has rows of "
                             f"{tuple(held[0].shape)}; sender and receiver are out of step")
        return expected[1:]
    return tuple(held[0].shape) if held else None


def _add_delta(memory: torch.Tensor, frame: bytes | memoryview, codec: str, dtype: torch.dtype) -> torch.Tensor:
    """m + Q(a - m) in `dtype`, for the delta rows; `memory` is their current m in fp32."""
    try:
        delta = decode(frame, device=memory.device, codec=codec, shape=memory.shape)
    except CodecError as error:
        raise CodecError(f"delta frame does not fit m ({error}); sender and receiver are out of step, "
                         "or the frame is corrupted") from None
    return (memory + delta.to(torch.float32)).to(dtype)


def _split(fresh: list[bool]) -> tuple[list[int], list[int]]:
    return [r for r, f in enumerate(fresh) if f], [r for r, f in enumerate(fresh) if not f]


def _pack(ids: list[int], fresh: list[bool], counts: list[int], full_frame: bytes, delta_frame: bytes) -> bytes:
    # header, ids (i64), update counts of the sender's m before this frame (u32), flags, padding,
    # length of the full-precision part, then the two plain codec frames
    head = _HEAD.pack(_MAGIC, _VERSION, len(ids)) + struct.pack(f"<{len(ids)}q{len(ids)}I", *ids, *counts)
    head += bytes(fresh) + bytes(-(len(head) + len(ids)) % 8) + _LEN.pack(len(full_frame))
    return b"".join((head, full_frame, delta_frame))


def _unpack(frame: bytes | memoryview) -> tuple[list[int], list[bool], list[int], memoryview | None,
                                               memoryview | None]:
    try:
        view = memoryview(frame).cast("B")
    except TypeError:
        raise CodecError(f"activation frame must be bytes or memoryview, got {type(frame).__name__}") from None
    if len(view) < _HEAD.size:
        raise CodecError("activation frame truncated inside its header")
    magic, version, batch = _HEAD.unpack_from(view)
    if magic != _MAGIC or version != _VERSION:
        raise CodecError(f"not an activation-delta frame (magic {bytes(magic)!r}, version {version})")
    flags_at = _HEAD.size + 12 * batch
    len_at = flags_at + batch + (-(flags_at + batch) % 8)
    if len(view) < len_at + _LEN.size:
        raise CodecError("activation frame truncated inside its sample list")
    ids = list(struct.unpack_from(f"<{batch}q", view, _HEAD.size))
    counts = list(struct.unpack_from(f"<{batch}I", view, _HEAD.size + 8 * batch))
    flags = bytes(view[flags_at:flags_at + batch])
    if any(f > 1 for f in flags):
        raise CodecError("activation frame has corrupted row flags")
    fresh = [bool(f) for f in flags]
    (full_len,) = _LEN.unpack_from(view, len_at)
    body = len_at + _LEN.size
    if full_len > len(view) - body:
        raise CodecError("activation frame truncated inside its full-precision part")
    full = view[body:body + full_len] if any(fresh) else None
    delta = view[body + full_len:] if not all(fresh) else None
    if ((full_len == 0) == any(fresh) or (delta is not None and len(delta) == 0)
            or (delta is None and len(view) > body + full_len)):
        raise CodecError("activation frame's parts do not match its row flags (corrupted frame)")
    return ids, fresh, counts, full, delta
