"""Hand a stage's state (parameters + optimizer) from a live replica to a newcomer, over zmq.

The donor's `ZmqTransport` answers on its ordinary data port, so state transfer needs no extra
port, address or firewall rule. The donor publishes an opaque blob it built itself (e.g.
`torch.save` of its state dicts into a buffer, after a committed step):

    transport.serve_state(stage, blob)        # donor, e.g. when the plan names a newcomer
    blob = fetch_state(donor_address, stage)  # newcomer, from one replica
    blob = fetch_state_any(replica_addresses, stage, spread_key=my_name)  # spread over replicas
    blob = fetch_state_any([(address, key), ...], stage, spread_key=my_name, keys=my_keys)  # curve swarm

Protocol (control kinds, exempt from the plan version; bodies are the Structs in `peers.dataplane.wire`):
  state_request {"stage": s, "chunk": -1}          -> state_meta {"stage", "serial", "bytes",
                                                      "chunks", "chunk_bytes", "sha256"}
  state_request {"stage": s, "chunk": i, "serial"} -> state_chunk (header step = serial,
                                                      index = i, payload = the chunk's bytes)
  anything the donor cannot serve                  -> state_error {"error": "why", "retry": bool}
The client keeps a few chunk requests in flight (the donor's ROUTER never queues unboundedly),
so a multi-GB state moves in bounded memory on the donor. Each publish gets a new serial; the
donor keeps the previous blob too, so a transfer survives one update, and the client checks the
sha256 of what it assembled.

A transfer is resumable: what arrived is kept in a `PartialState`, and a donor that serves the same
bytes (replicas of a stage at one step do: same sha256) is asked only for the chunks still missing,
so a donor's death costs the chunks in flight, not the transfer. A donor counts as dead when nothing
arrives for `stall_timeout` (or a chunk's share of the whole `timeout`, when longer); the whole
transfer may take longer, as long as it keeps moving.

Every transfer also measures the link it crossed, passively: the metadata round trip gives the
latency and the chunk stream (a window of requests in flight) the bandwidth. `on_link(address,
gbps, latency_ms)` hears it once per donor whose stream carried at least `PASSIVE_MIN_BYTES`, so
the peer publishes what its links actually did, not only what a probe saw at join.
"""
from __future__ import annotations

import hashlib
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import zmq

from peers.dataplane import wire
from peers.dataplane.client import check_curve_pair, open_dealer, receive_reply, send_control
from peers.dataplane.transport import Message
from peers.security import CurveKeys

__all__ = ["StateTransferError", "StateServer", "PartialState", "fetch_state", "fetch_state_any",
           "DEFAULT_CHUNK_BYTES", "DEFAULT_MAX_STATE_BYTES", "PASSIVE_MIN_BYTES", "OnLink"]

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_STATE_BYTES = 64 * 1024**3
PASSIVE_MIN_BYTES = 1024 * 1024  # a shorter stream says more about latency and the donor than about bandwidth
OnLink = Callable[[str, float, float], None]  # (donor address, Gbit/s, one-way latency in ms)
_WINDOW = 4


class StateTransferError(ConnectionError):
    """A state fetch failed; the message says whether to try another donor or raise a limit."""


@dataclass(frozen=True)
class _Snapshot:
    serial: int
    blob: memoryview
    sha256: str


@dataclass
class PartialState:
    """The chunks of one state received so far and the donor each came from, kept across donors."""

    sha256: str = ""
    nbytes: int = 0
    chunk_bytes: int = 0
    chunks: list[bytes | None] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)  # the address of the donor of each chunk ("" missing)
    received: int = 0  # bytes

    def resume(self, meta: wire.StateMetaBody) -> None:
        """Continue with the state `meta` announces: what arrived stays if it is the same bytes, else it restarts."""
        if (meta.sha256, meta.bytes, meta.chunk_bytes) != (self.sha256, self.nbytes, self.chunk_bytes):
            self.sha256, self.nbytes, self.chunk_bytes = meta.sha256, meta.bytes, meta.chunk_bytes
            self.chunks, self.origins, self.received = [None] * meta.chunks, [""] * meta.chunks, 0

    def missing(self) -> list[int]:
        return [index for index, chunk in enumerate(self.chunks) if chunk is None]

    def add(self, index: int, chunk: bytes, origin: str) -> None:
        if self.chunks[index] is None:
            self.chunks[index], self.origins[index] = chunk, origin
            self.received += len(chunk)

    def assembled(self) -> bytes | None:
        """The whole state once it checks out against its sha256; None (and everything dropped) if it does not."""
        blob = b"".join(chunk for chunk in self.chunks if chunk is not None)
        if len(blob) == self.nbytes and hashlib.sha256(blob).hexdigest() == self.sha256:
            return blob
        self.sha256, self.chunks, self.origins, self.received = "", [], [], 0
        return None


class StateServer:
    """The donor's side: published blobs per stage, and the answer to each request.

    Holds no socket: the transport feeds it requests and sends its replies, so it is safe to call
    `publish` from the training thread while the transport's loop thread calls `answer`.
    """

    def __init__(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if not 0 < chunk_bytes <= wire.MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in 1..{wire.MAX_CHUNK_BYTES}, got {chunk_bytes}")
        self.chunk_bytes = chunk_bytes
        self._lock = threading.Lock()
        self._serial = 0
        self._current: dict[int, _Snapshot] = {}
        self._previous: dict[int, _Snapshot] = {}

    def publish(self, stage: int, blob: bytes | None) -> None:
        """Serve `blob` as the state of `stage` from now on (None stops serving that stage)."""
        with self._lock:
            old = self._current.pop(stage, None)
            if old is not None:
                self._previous[stage] = old
            if blob is None:
                self._previous.pop(stage, None)
                return
            view = memoryview(blob).toreadonly()
            self._serial += 1
            self._current[stage] = _Snapshot(self._serial, view, hashlib.sha256(view).hexdigest())

    def stages(self) -> list[int]:
        """The stages this server currently serves."""
        with self._lock:
            return sorted(self._current)

    def answer(self, request: Message) -> tuple[str, int, int, bytes | memoryview]:
        """(kind, step, index, payload) of the reply to one `state_request`."""
        try:
            body = wire.unpack_body(request.payload, wire.StateRequestBody)
        except wire.WireError as error:
            return _error(f"bad state request: {error}")
        stage, chunk = body.stage, body.chunk
        with self._lock:
            current, previous = self._current.get(stage), self._previous.get(stage)
            served = sorted(self._current)
        if current is None:
            return _error(f"this peer serves no state for stage {stage} (it serves stages {served}); "
                          f"ask another replica of stage {stage}")
        if chunk < 0:
            meta = wire.StateMetaBody(stage=stage, serial=current.serial, bytes=current.blob.nbytes,
                                      chunks=_chunk_count(current.blob.nbytes, self.chunk_bytes),
                                      chunk_bytes=self.chunk_bytes, sha256=current.sha256)
            return wire.STATE_META, stage, request.index, wire.pack_body(meta)
        snapshot = next((s for s in (current, previous) if s is not None and s.serial == body.serial), None)
        if snapshot is None:
            return _error(f"state of stage {stage} changed twice during the transfer; fetch again", retry=True)
        start = chunk * self.chunk_bytes
        if start >= max(snapshot.blob.nbytes, 1):
            return _error(f"chunk {chunk} is past the end of the state of stage {stage}")
        return wire.STATE_CHUNK, snapshot.serial, chunk, snapshot.blob[start:start + self.chunk_bytes]


def fetch_state(address: str, stage: int, timeout: float = 120.0, *, max_bytes: int = DEFAULT_MAX_STATE_BYTES,
                progress: Callable[[int, int], None] | None = None, keys: CurveKeys | None = None,
                server_key: str | None = None, stall_timeout: float | None = None,
                partial: PartialState | None = None, on_link: OnLink | None = None) -> bytes:
    """Download the state blob of `stage` from the donor at `address` (a peer's data address).

    Raises StateTransferError when the donor does not answer within `timeout` seconds, serves no
    state for `stage`, announces more than `max_bytes`, or sends something that fails the sha256
    check. The error says what to do (try another replica, raise `max_bytes`). `timeout` bounds
    the whole transfer: derive it from the state size and the measured link speed. `progress`,
    if given, is called with (bytes received, total bytes) after each chunk, e.g. to drive a bar.
    keys, server_key: this host's curve keys and the donor's public key in a curve swarm (both or
    neither); a donor that does not admit `keys.public` never answers (StateTransferError).
    stall_timeout: give up on the donor when nothing arrives for this long (default: `timeout`), or for
    a chunk's share of `timeout` when that is longer: a chunk arrives whole, and on a slow link its
    seconds on the wire are no stall (4 MiB take 17 s at 2 Mbit/s).
    partial: the chunks an earlier donor sent; the same state is continued, and `partial` updated.
    on_link: told what the transfer measured of the link to `address` (module docstring).
    """
    check_curve_pair(keys, server_key)
    stall_s = timeout if stall_timeout is None else stall_timeout
    deadline = _Deadline(time.monotonic() + timeout, stall_s)
    partial = PartialState() if partial is None else partial
    for _attempt in range(3):
        # zmq.MAXMSGSIZE is fixed when the socket connects, before the chunk size is known
        stream = _Stream()
        with open_dealer(address, max_message_bytes=wire.MAX_CHUNK_BYTES, keys=keys, server_key=server_key) as sock:
            meta = _request_meta(sock, address, stage, deadline, stream)
            if meta.bytes > max_bytes:
                raise StateTransferError(f"state of stage {stage} at {address} is {meta.bytes} bytes, above "
                                         f"max_bytes={max_bytes}; pass a larger max_bytes if that is expected")
            partial.resume(meta)
            deadline.stall_s = max(stall_s, timeout * min(1.0, meta.chunk_bytes / max(meta.bytes, 1)))
            try:
                blob = _download(sock, address, stage, meta, partial, deadline, progress, stream)
            finally:  # a donor that died mid-stream still measured the link while it sent
                if on_link is not None and (reading := stream.reading()) is not None:
                    on_link(address, *reading)
        if blob is not None:
            return blob
    raise StateTransferError(f"state of stage {stage} at {address} kept changing during the transfer; "
                             f"fetch again after the next step")


def fetch_state_any(donors: Sequence[str | tuple[str, str | None]] | Mapping[str, str | None], stage: int, *,
                    spread_key: str = "", timeout: float = 120.0, max_bytes: int = DEFAULT_MAX_STATE_BYTES,
                    keys: CurveKeys | None = None, stall_timeout: float | None = None,
                    partial: PartialState | None = None, progress: Callable[[int, int], None] | None = None,
                    on_link: OnLink | None = None) -> bytes:
    """`fetch_state` from the first donor that answers, starting at one picked by `spread_key`
    (none: in the order given), each donor continuing the chunks the previous ones sent.

    Newcomers pass their own name as `spread_key`, so several newcomers of one stage start at
    different replicas (load spread) and each falls back to the next replica if its pick fails.
    `timeout` and `stall_timeout` apply to each donor. Raises StateTransferError listing every failure.

    donors: addresses (open swarm), or (address, server_key) pairs, or a mapping address ->
    server_key, for a curve swarm together with this host's `keys`. A donor without a key is
    fetched from without curve, which a curve donor never answers.
    """
    pairs = _donor_pairs(donors)
    if not pairs:
        raise StateTransferError(f"no live replica of stage {stage} to fetch from; restore it from the checkpoint")
    start = zlib.crc32(spread_key.encode()) % len(pairs) if spread_key else 0
    failures, partial = [], PartialState() if partial is None else partial
    for address, server_key in [*pairs[start:], *pairs[:start]]:
        try:
            return fetch_state(address, stage, timeout, max_bytes=max_bytes, keys=keys if server_key else None,
                               server_key=server_key if keys else None, stall_timeout=stall_timeout,
                               partial=partial, progress=progress, on_link=on_link)
        except StateTransferError as error:
            failures.append(str(error))
    raise StateTransferError(f"every replica of stage {stage} failed: " + " | ".join(failures))


def _donor_pairs(donors: Sequence[str | tuple[str, str | None]] | Mapping[str, str | None],
                 ) -> list[tuple[str, str | None]]:
    """Every donor as (address, server key or None), in the given order."""
    if isinstance(donors, Mapping):
        return list(donors.items())
    return [(donor, None) if isinstance(donor, str) else (donor[0], donor[1]) for donor in donors]


@dataclass
class _Deadline:
    """The end of a fetch from one donor: its whole `timeout`, or `stall_s` after the last thing that arrived."""

    end: float
    stall_s: float
    last: float = field(default_factory=time.monotonic)

    def next(self) -> float:
        return min(self.end, self.last + self.stall_s)

    def moved(self) -> None:
        self.last = time.monotonic()

    def describe(self) -> str:
        stalled = self.last + self.stall_s <= self.end
        return f"nothing for {self.stall_s:.1f} s" if stalled else "its whole timeout passed"


@dataclass
class _Stream:
    """What one donor's answers say about the link to it: the metadata round trip, then the chunks."""

    rtt_s: float = 0.0
    started: float = 0.0  # the first chunk request
    bytes: int = 0
    last: float = 0.0  # the latest chunk's arrival

    def reading(self) -> tuple[float, float] | None:
        """(Gbit/s, one-way ms), or None for a stream too short to tell bandwidth from latency."""
        busy = self.last - self.started - self.rtt_s  # the window keeps the link busy after one round trip
        if self.bytes < PASSIVE_MIN_BYTES or busy <= 0:
            return None
        return self.bytes * 8 / busy / 1e9, self.rtt_s * 1e3 / 2


def _request_meta(sock: zmq.Socket[bytes], address: str, stage: int, deadline: _Deadline,
                  stream: _Stream) -> wire.StateMetaBody:
    body = wire.pack_body(wire.StateRequestBody(stage=stage, chunk=-1))
    asked = time.monotonic()
    send_control(sock, wire.STATE_REQUEST, body, step=stage, index=-1)
    while True:
        reply = receive_reply(sock, deadline.next(), max_message_bytes=wire.MAX_HEADER_BYTES)
        if reply is None:
            raise StateTransferError(f"no answer from the donor at {address} ({deadline.describe()}): is it alive "
                                     f"and its data port reachable? Try another replica of stage {stage}")
        if reply.kind == wire.STATE_ERROR:
            raise StateTransferError(f"donor at {address} cannot serve stage {stage}: {_error_body(reply).error}")
        if reply.kind != wire.STATE_META:
            continue
        try:
            meta = wire.unpack_body(reply.payload, wire.StateMetaBody)
        except wire.WireError as error:
            raise StateTransferError(f"donor at {address} sent bad state metadata: {error}") from None
        if meta.stage != stage or meta.chunks != _chunk_count(meta.bytes, meta.chunk_bytes):
            raise StateTransferError(f"donor at {address} sent inconsistent state metadata {meta}")
        stream.rtt_s = time.monotonic() - asked
        return meta


def _download(sock: zmq.Socket[bytes], address: str, stage: int, meta: wire.StateMetaBody, partial: PartialState,
              deadline: _Deadline, progress: Callable[[int, int], None] | None, stream: _Stream) -> bytes | None:
    """The assembled blob, or None when the donor's state changed under us (caller retries). Asks only
    for the chunks `partial` lacks, and fills them in as they arrive."""
    wanted = partial.missing()[::-1]  # popped from the end: the first missing chunk first
    in_flight = 0
    deadline.moved()
    stream.started = time.monotonic()
    while wanted or in_flight:
        while wanted and in_flight < _WINDOW:
            _request_chunk(sock, stage, wanted.pop(), meta.serial)
            in_flight += 1
        reply = receive_reply(sock, deadline.next(), max_message_bytes=meta.chunk_bytes)
        if reply is None:
            raise StateTransferError(f"donor at {address} stopped sending the state of stage {stage} "
                                     f"({deadline.describe()}, {len(partial.missing())} of {meta.chunks} chunks "
                                     f"missing); try another replica: it continues from there")
        if reply.kind == wire.STATE_ERROR:
            error = _error_body(reply)
            if error.retry:
                return None
            raise StateTransferError(f"donor at {address} failed serving stage {stage}: {error.error}")
        if reply.kind != wire.STATE_CHUNK or reply.step != meta.serial or not 0 <= reply.index < meta.chunks:
            continue
        in_flight -= 1
        deadline.moved()
        stream.bytes, stream.last = stream.bytes + memoryview(reply.payload).nbytes, deadline.last
        partial.add(reply.index, bytes(reply.payload), address)
        if progress is not None:
            progress(partial.received, meta.bytes)
    blob = partial.assembled()
    if blob is None:
        raise StateTransferError(f"state of stage {stage} from {address} failed its size/sha256 check; "
                                 f"try another replica")
    return blob


def _request_chunk(sock: zmq.Socket[bytes], stage: int, chunk: int, serial: int) -> None:
    body = wire.pack_body(wire.StateRequestBody(stage=stage, chunk=chunk, serial=serial))
    send_control(sock, wire.STATE_REQUEST, body, step=stage, index=chunk)


def _chunk_count(nbytes: int, chunk_bytes: int) -> int:
    return max(1, -(-nbytes // chunk_bytes))


def _error_body(reply: Message) -> wire.StateErrorBody:
    """The donor's state_error body; an unreadable one counts as final (not worth a retry)."""
    try:
        return wire.unpack_body(reply.payload, wire.StateErrorBody)
    except wire.WireError:
        return wire.StateErrorBody(error="unreadable error message")


def _error(reason: str, retry: bool = False) -> tuple[str, int, int, bytes]:
    return wire.STATE_ERROR, 0, 0, wire.pack_body(wire.StateErrorBody(error=reason, retry=retry))
