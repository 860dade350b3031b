"""The three records of the control plane and the subkeys they are signed under.

Three records live in the hivemind DHT, all signed (`RSASignatureValidator`: the writer's
`[owner:...]` marker is part of the subkey, so nobody can overwrite another node's record):

- `swarm.peers.{bucket}`, one subkey per peer: a `PeerRecord`, re-stored every heartbeat with a TTL
  of a few heartbeats, so a peer that dies silently vanishes on its own. A DHT get returns every
  subkey of a key in one message (hivemind caps those at 4 MiB), so the records are spread over
  PEER_BUCKETS keys by a hash of the peer's name (`peer_bucket`), and each record is bounded
  (PEER_RECORD_MAX_BYTES): at 10,000 peers a bucket holds ~160 records, a few hundred KB.
- `swarm.plan`, subkey of the coordinator: the current `PlanRecord` (versioned; peers act only on
  a version newer than theirs).
- `swarm.control`, subkey of the coordinator: the `ControlRecord` driving the step protocol: which
  step was committed last and which plan version governs the next step.

Records cross the wire as plain dicts (`to_wire`); `from_wire` never trusts them: anything
mistyped, out of bounds or inconsistent raises `RecordError` naming the field.
"""
from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import msgspec

from ..dataplane.transport import REJECTIONS
from .admission import Admitted, CurveKey
from .changes import PlanReason, Resplit, SourceKind, StateSource
from .training import CHANNELS, Codecs, TrainingSpec
from .validation import (
    FiniteFloat,
    Name,
    NonNegativeFloat,
    NonNegativeInt,
    PeerName,
    PositiveFloat,
    PositiveInt,
    RecordError,
    check_encoded_size,
    encoded_size,
    from_builtins,
    to_builtins,
)

__all__ = [
    "PEERS_KEY", "PLAN_KEY", "CONTROL_KEY", "PEER_STATES", "PeerState", "Link", "StepBreakdown", "PeerRecord",
    "PlanRecord",
    "ControlRecord", "peer_subkey", "subkey_name", "subkey_owner", "PEER_BUCKETS", "peer_bucket", "bucket_key",
    "BUCKET_KEYS", "PEER_RECORD_MAX_BYTES", "MAX_LINKS", "MAX_SUSPECTS", "MAX_DHT_ADDRS", "MAX_ERROR_CHARS",
]

PEERS_KEY = "swarm.peers"  # the prefix of the bucket keys: records live under `bucket_key(peer_bucket(name))`
PLAN_KEY = "swarm.plan"
CONTROL_KEY = "swarm.control"
PeerState = Literal["joining", "ready", "training", "standby", "leaving"]
PEER_STATES: tuple[str, ...] = get_args(PeerState)

# Fixed within a swarm: every reader and writer must agree on it. 64 buckets keep a bucket near
# 160 records (~200 KB; at most ~1.7 MiB with every record at its bound) at 10,000 peers.
PEER_BUCKETS = 64

# A peer record's bounds. Every field has one; with ASCII text they add up to about 8.0 KB
# (tests/peers/test_record_bounds.py builds that record), and `PeerRecord` refuses any record whose
# msgpack encoding exceeds PEER_RECORD_MAX_BYTES (multi-byte text). The DHT adds ~0.8 KB per record
# (the signer's key in the subkey, the signature, the expiration).
PEER_RECORD_MAX_BYTES = 8192
MAX_LINKS = 28  # links it measured (8 probed at join, then those its plans give it)
MAX_SUSPECTS = 16  # the peers it flagged most (a writer keeps the top counts)
MAX_DHT_ADDRS = 8
MAX_ERROR_CHARS = 256

_OWNER = b"[owner:"
Address = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
_PeerAddress = Annotated[str, msgspec.Meta(max_length=256)]
_MULTIADDR_CHARS = 128
_Multiaddr = Annotated[str, msgspec.Meta(max_length=_MULTIADDR_CHARS)]
_Short = Annotated[str, msgspec.Meta(max_length=64)]  # device, checksum, curve key, join proof
_Error = Annotated[str, msgspec.Meta(max_length=MAX_ERROR_CHARS)]
_Blamed = Annotated[str, msgspec.Meta(max_length=80)]  # "" or a peer name
_Cell = Annotated[int, msgspec.Meta(ge=-1)]  # -1: no cell
_Counts = Annotated[dict[_Short, NonNegativeInt], msgspec.Meta(max_length=max(len(CHANNELS), len(REJECTIONS)))]


def peer_bucket(name: str) -> int:
    """The bucket holding `name`'s record: the first 8 bytes of sha256(name), so every process and
    every Python version agrees (the built-in `hash` is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % PEER_BUCKETS


def bucket_key(bucket: int) -> str:
    """The DHT key of one bucket of peer records."""
    if not 0 <= bucket < PEER_BUCKETS:
        raise ValueError(f"bucket {bucket} is not in 0..{PEER_BUCKETS - 1}")
    return f"{PEERS_KEY}.{bucket}"


BUCKET_KEYS: tuple[str, ...] = tuple(bucket_key(bucket) for bucket in range(PEER_BUCKETS))


def peer_subkey(name: str, owner: bytes) -> bytes:
    """The subkey a node writes under: its name followed by its signing marker."""
    if not name or _OWNER.decode() in name:
        raise RecordError(f"invalid node name {name!r}")
    return name.encode() + owner


def subkey_name(subkey: Any) -> str:
    """The node name in a subkey written by `peer_subkey`."""
    if not isinstance(subkey, bytes) or _OWNER not in subkey:
        raise RecordError(f"subkey {subkey!r} carries no owner marker (unsigned record)")
    return subkey.split(_OWNER, 1)[0].decode("utf-8", errors="replace")


def subkey_owner(subkey: bytes) -> bytes:
    """The `[owner:...]` marker in a subkey: who signed the record."""
    return subkey[subkey.index(_OWNER):]


Wired = TypeVar("Wired", bound="_Record")


class _Record(msgspec.Struct):
    """A DHT record: plain values on the wire, checked on the way in."""

    what: ClassVar[str]  # what error messages call it

    def to_wire(self) -> dict[str, Any]:
        return to_builtins(self)

    @classmethod
    def from_wire(cls: type[Wired], value: Any) -> Wired:
        return from_builtins(value, cls, cls.what)


class Link(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A measured link to another peer.

    at_most: the probe failed or timed out, so the link is only known to be slow: `bandwidth_gbps`
    is the most it can carry (what would have arrived within the probe's timeout) and `latency_ms`
    the least it takes. The scheduler and the timeouts price it as that slow link, never as a fast one.
    from_traffic: `bandwidth_gbps` was read from the training traffic on the link (`peers.dataplane.meter`):
    the link carries clearly less than its probe measured (it slowed down since), or its probe failed.
    """

    bandwidth_gbps: PositiveFloat
    latency_ms: NonNegativeFloat
    at_most: bool = False
    from_traffic: bool = False


class StepBreakdown(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where one committed step's seconds went on a peer: compute (codecs included), waiting for the
    previous stage's activations and the next stage's gradients, the all-reduce, and the wait from
    prepared to the coordinator's commit (`swarm status --json` shows it as "breakdown")."""

    step: NonNegativeInt
    compute_s: NonNegativeFloat
    wait_forward_s: NonNegativeFloat
    wait_backward_s: NonNegativeFloat
    allreduce_s: NonNegativeFloat
    commit_s: NonNegativeFloat


class PeerRecord(_Record):
    """What a peer announces every heartbeat (and right after each step it prepares).

    step: the last step it applied; prepared_step/prepared_version: the step whose gradients it
    has reduced and holds ready to apply (the coordinator commits when every grid member has it).
    links: measured links by peer name; bytes_sent / values_sent: cumulative per channel
    (`CHANNELS`), so wire bits per value show. dht_addrs: the peer's DHT multiaddrs (a restarted
    coordinator re-enters the DHT through them). rejected: messages its data port or engine
    refused, cumulative per category (`peers.dataplane.transport.REJECTIONS`: malformed, nonfinite, ...).
    suspects: peers whose gradient shares this peer's all-reduce refused or flagged as outliers,
    with the number of steps it did (cumulative, over every plan). error: why its last step under
    `plan_version` failed ("" if none); blamed: the peer that failure names (the silent or
    misbehaving neighbour, or this peer itself when the fault is its own). codec_gvalues: billions of
    values a second this peer's device puts through one codec pass (an encode or a decode) of the
    swarm's forward codec, timed at warm-up; the scheduler prices every message's codecs with it
    (None: not measured yet).

    Every field is bounded (MAX_LINKS, MAX_SUSPECTS, ...) and the whole record encodes to at most
    PEER_RECORD_MAX_BYTES, so a bucket of records stays far below hivemind's message limit.
    `from_wire` refuses a record beyond its bounds; `to_wire`, the writer's side, trims the fields a
    running peer fills from what happens to it (error text, suspects, links, DHT addresses), so a
    peer's own heartbeat never fails validation. Its name, address and device are the operator's:
    those it does not trim.
    """

    what: ClassVar[str] = "peer record"

    name: PeerName
    address: _PeerAddress
    device: _Short
    tflops: PositiveFloat
    memory_gb: NonNegativeFloat
    state: PeerState = "joining"
    heartbeat: FiniteFloat = 0.0
    links: Annotated[dict[PeerName, Link], msgspec.Meta(max_length=MAX_LINKS)] = {}
    dht_addrs: Annotated[list[_Multiaddr], msgspec.Meta(max_length=MAX_DHT_ADDRS)] = []
    plan_version: NonNegativeInt = 0
    step: NonNegativeInt = 0
    stage: _Cell = -1
    replica: _Cell = -1
    param_checksum: _Short = ""
    prepared_step: NonNegativeInt = 0
    prepared_version: NonNegativeInt = 0
    loss: float | None = None
    bytes_sent: _Counts = {}
    values_sent: _Counts = {}
    dropped_stale: NonNegativeInt = 0
    rejected: _Counts = {}
    suspects: Annotated[dict[PeerName, NonNegativeInt], msgspec.Meta(max_length=MAX_SUSPECTS)] = {}
    error: _Error = ""
    blamed: _Blamed = ""
    curve_key: _Short = ""
    admission: _Short = ""
    breakdown: StepBreakdown | None = None  # of the last step this peer applied
    codec_gvalues: PositiveFloat | None = None

    def __post_init__(self) -> None:
        for table in (self.bytes_sent, self.values_sent):
            unknown = set(table) - set(CHANNELS)
            if unknown:
                raise RecordError(f"peer record fields 'bytes_sent'/'values_sent' name unknown channels "
                                  f"{sorted(unknown)}; channels are {', '.join(CHANNELS)}")
        unknown = set(self.rejected) - set(REJECTIONS)
        if unknown:
            raise RecordError(f"peer record field 'rejected' names unknown categories {sorted(unknown)[:8]}; "
                              f"categories are {', '.join(REJECTIONS)}")
        check_encoded_size(self, PEER_RECORD_MAX_BYTES, f"peer record {self.name!r}")

    def to_wire(self) -> dict[str, Any]:
        """The record as its writer announces it: within every bound (see the class docstring)."""
        return _trimmed(to_builtins(self))



class PlanRecord(_Record, forbid_unknown_fields=True):
    """A versioned assignment of peers to the stage x replica grid, starting at `start_step`.

    grid[s][r] names the peer holding stage s of pipeline replica r; layers[s] its layer count;
    standby: live peers the plan gives no cell (yet). sources[name]: where that peer gets its
    stage state (donors are spread over a stage's holders). training: the run's spec with this
    plan's timeouts. reason: why this plan replaced the previous one (shown by `swarm status`).
    keys: the curve public key of every peer the plan names (empty in an open swarm): the only
    keys neighbours accept connections from, and the server keys they dial. checksums[s]: the
    parameter checksum stage s's holders agree on at start_step - 1 ("" unknown; empty list: none),
    which a peer loading that stage from a donor must get. codec_state: the checkpoint the cells
    restore from holds every cell's codec state for this very grid (error-feedback residuals, AQ-SGD
    memories): each peer loading from it loads its own cell's too, so the run goes on as it would
    have. Without it they start fresh codec state, both ends of every link alike. resplit: for a
    plan whose layer split differs from the previous one, where its `SourceKind.LAYERS` cells fetch
    their layers.
    """

    what: ClassVar[str] = "plan record"

    version: PositiveInt
    start_step: PositiveInt
    grid: list[list[Name]]
    layers: list[PositiveInt]
    addresses: dict[Name, Address]
    sources: dict[Name, StateSource]
    codecs: Codecs
    training: TrainingSpec
    reason: PlanReason
    standby: list[Name] = []
    checkpoint_address: str = ""
    keys: dict[Name, CurveKey] = {}
    checksums: list[str] = []
    codec_state: bool = False
    resplit: Resplit | None = None

    def __post_init__(self) -> None:
        widths = {len(row) for row in self.grid}
        if not self.grid or len(widths) != 1 or 0 in widths:
            raise RecordError("plan record field 'grid' must be a non-empty rectangle of peer names")
        if self.checksums and len(self.checksums) != self.stages:
            raise RecordError(f"plan record field 'checksums' has {len(self.checksums)} entries for {self.stages} "
                              "stages")
        if len(self.layers) != self.stages:
            raise RecordError(f"plan record field 'layers' has {len(self.layers)} entries for {self.stages} stages")
        members = self.members()
        if len(set(members)) != len(members):
            raise RecordError("plan record field 'grid' names a peer twice")
        missing = [name for name in members if name not in self.addresses or name not in self.sources]
        if missing:
            raise RecordError(f"plan record fields 'addresses'/'sources' lack grid peers {missing}")
        unreachable = sorted({source.donor for source in self.sources.values() if source.donor} - set(self.addresses))
        if unreachable:
            raise RecordError(f"plan record field 'addresses' lacks the donors {unreachable} its sources name")
        if self.training.timeouts is None:
            raise RecordError("plan record field 'training.timeouts' is required in a published plan")
        try:
            self.training.check_grid(self.replicas)
        except ValueError as error:
            raise RecordError(f"plan record field 'training': {error}") from None

    @property
    def stages(self) -> int:
        return len(self.grid)

    @property
    def replicas(self) -> int:
        return len(self.grid[0]) if self.grid else 0

    def position(self, name: str) -> tuple[int, int] | None:
        """(stage, replica) of `name` in the grid, or None when it has no cell."""
        for stage, row in enumerate(self.grid):
            if name in row:
                return stage, row.index(name)
        return None

    def members(self) -> list[str]:
        return [name for row in self.grid for name in row]

    def donates(self, name: str) -> bool:
        """Whether `name` must serve its stage as it was before this plan: a cell's donor (or a fallback
        one, see `donors_of`), or a holder of an old stage that re-split cells fetch layers from."""
        return (any(name in self.donors_of(stage) for stage in range(len(self.grid)))
                or (self.resplit is not None and any(name in holders for holders in self.resplit.holders)))

    def donors_of(self, stage: int) -> list[str]:
        """Who serves `stage` as it was before this plan when a cell of it loads from a peer: the donors
        the cells name, then the cells that keep the stage (the fallback when a donor dies mid-transfer)."""
        named = [source.donor for name in self.grid[stage]
                 if (source := self.sources[name]).kind is SourceKind.PEER and source.donor]
        keepers = [name for name in self.grid[stage] if self.sources[name].kind is SourceKind.KEEP]
        return list(dict.fromkeys(named + keepers)) if named else []


class ControlRecord(_Record, forbid_unknown_fields=True):
    """The step protocol's state, written by the coordinator after every decision.

    committed_step was applied everywhere under committed_version; the next step,
    committed_step + 1, runs under plan_version. A peer holding a prepared step that is not
    committed while plan_version moved on aborts it (discards its gradients) and reruns it.
    checkpoint_step: peers publish their stage state of this step for the coordinator to fetch.
    done: the run reached its last step; peers exit.
    probe_address: the coordinator's data port, which checks a joining peer's reachability.
    training, codecs: what the swarm trains and how its channels are compressed (`training` without
    timeouts), so a peer that joins before the first plan compiles the right codecs and times the
    right model while it warms up.
    curve_key: that port's CurveZMQ public key; admitted: every peer admitted so far, by name
    (both empty in an open swarm). A joining peer waits to see itself here before it probes.
    plan_version 0 means no plan yet (the coordinator is waiting for peers).
    """

    what: ClassVar[str] = "control record"

    plan_version: NonNegativeInt
    committed_step: NonNegativeInt
    committed_version: NonNegativeInt
    total_steps: PositiveInt
    loss: float | None = None
    tokens_per_s: NonNegativeFloat = 0.0
    checkpoint_step: NonNegativeInt = 0
    done: bool = False
    probe_address: str = ""
    curve_key: str = ""
    admitted: dict[Name, Admitted] = {}
    training: TrainingSpec = msgspec.field(default_factory=TrainingSpec)
    codecs: Codecs = msgspec.field(default_factory=Codecs)


def _trimmed(wire: dict[str, Any]) -> dict[str, Any]:
    """A peer record's wire form cut to its bounds where a running peer's own doings could exceed them.

    Error text is shortened, the most-flagged suspects and the nearest links kept, the first DHT
    addresses that fit their bound kept; then, while multi-byte text still holds it above PEER_RECORD_MAX_BYTES, the
    error text halves, and the least-flagged suspects and farthest links go, one at a time.
    """
    wire["error"] = _cut(wire["error"], MAX_ERROR_CHARS)
    wire["blamed"] = _cut(wire["blamed"], 80)
    suspects: dict[str, int] = wire["suspects"]
    if len(suspects) > MAX_SUSPECTS:
        suspects = dict(sorted(suspects.items(), key=lambda item: (-item[1], item[0]))[:MAX_SUSPECTS])
    links: dict[str, dict[str, Any]] = wire["links"]
    if len(links) > MAX_LINKS:
        links = dict(sorted(links.items(), key=lambda item: (*_link_rank(item[1]), item[0]))[:MAX_LINKS])
    addrs = [addr for addr in wire["dht_addrs"] if len(addr) <= _MULTIADDR_CHARS][:MAX_DHT_ADDRS]
    wire.update(suspects=suspects, links=links, dht_addrs=addrs)
    while encoded_size(wire) > PEER_RECORD_MAX_BYTES:
        if wire["error"]:
            wire["error"] = _cut(wire["error"], len(wire["error"]) // 2)
        elif suspects:
            del suspects[min(suspects, key=suspects.__getitem__)]
        elif links:
            del links[max(links, key=lambda name: _link_rank(links[name]))]
        else:
            break  # its name, address or device: `from_wire` says which bound they break
    return wire


def _link_rank(link: dict[str, Any]) -> tuple[bool, float]:
    """Which links a record keeps first: those known only to be slow (dropped, they would count as fast),
    then the nearest."""
    return not link.get("at_most", False), link["latency_ms"]


def _cut(text: str, length: int) -> str:
    """`text` in at most `length` characters, an ellipsis marking a cut."""
    if len(text) <= length:
        return text
    return text[:length - 1] + "…" if length > 0 else ""

