"""The three records of the control plane and the subkeys they are signed under.

Three records live in the hivemind DHT, all signed (`RSASignatureValidator`: the writer's
`[owner:...]` marker is part of the subkey, so nobody can overwrite another node's record):

- `swarm.peers`, one subkey per peer: a `PeerRecord`, re-stored every heartbeat with a TTL of a few
  heartbeats, so a peer that dies silently vanishes on its own.
- `swarm.plan`, subkey of the coordinator: the current `PlanRecord` (versioned; peers act only on
  a version newer than theirs).
- `swarm.control`, subkey of the coordinator: the `ControlRecord` driving the step protocol: which
  step was committed last and which plan version governs the next step.

Records cross the wire as plain dicts (`to_wire`); `from_wire` never trusts them: anything
mistyped, out of bounds or inconsistent raises `RecordError` naming the field.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import msgspec

from ..transport import REJECTIONS
from .admission import Admitted, CurveKey
from .changes import PlanReason, StateSource
from .training import CHANNELS, Codecs, TrainingSpec
from .validation import (
    FiniteFloat,
    Name,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    RecordError,
    from_builtins,
    to_builtins,
)

__all__ = [
    "PEERS_KEY", "PLAN_KEY", "CONTROL_KEY", "PEER_STATES", "PeerState", "Link", "PeerRecord", "PlanRecord",
    "ControlRecord", "peer_subkey", "subkey_name", "subkey_owner",
]

PEERS_KEY = "swarm.peers"
PLAN_KEY = "swarm.plan"
CONTROL_KEY = "swarm.control"
PeerState = Literal["joining", "ready", "training", "standby", "leaving"]
PEER_STATES: tuple[str, ...] = get_args(PeerState)

_OWNER = b"[owner:"
Address = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


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


class Link(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A measured link to another peer."""

    bandwidth_gbps: PositiveFloat
    latency_ms: NonNegativeFloat


class PeerRecord(_Record):
    """What a peer announces every heartbeat (and right after each step it prepares).

    step: the last step it applied; prepared_step/prepared_version: the step whose gradients it
    has reduced and holds ready to apply (the coordinator commits when every grid member has it).
    links: measured links by peer name; bytes_sent / values_sent: cumulative per channel
    (`CHANNELS`), so wire bits per value show. dht_addrs: the peer's DHT multiaddrs (a restarted
    coordinator re-enters the DHT through them). rejected: messages its data port or engine
    refused, cumulative per category (`peers.transport.REJECTIONS`: malformed, nonfinite, ...).
    suspects: peers whose gradient shares this peer's all-reduce refused or flagged as outliers,
    with the number of steps it did (cumulative, over every plan). error: why its last step under
    `plan_version` failed ("" if none); blamed: the peer that failure names (the silent or
    misbehaving neighbour, or this peer itself when the fault is its own).
    """

    what: ClassVar[str] = "peer record"

    name: Name
    address: str
    device: str
    tflops: PositiveFloat
    memory_gb: NonNegativeFloat
    state: PeerState = "joining"
    heartbeat: FiniteFloat = 0.0
    links: dict[Name, Link] = {}
    dht_addrs: list[str] = []
    plan_version: NonNegativeInt = 0
    step: NonNegativeInt = 0
    stage: int = -1
    replica: int = -1
    param_checksum: str = ""
    prepared_step: NonNegativeInt = 0
    prepared_version: NonNegativeInt = 0
    loss: float | None = None
    bytes_sent: dict[str, NonNegativeInt] = {}
    values_sent: dict[str, NonNegativeInt] = {}
    dropped_stale: NonNegativeInt = 0
    rejected: dict[str, NonNegativeInt] = {}
    suspects: dict[Name, NonNegativeInt] = {}
    error: str = ""
    blamed: str = ""
    curve_key: str = ""
    admission: str = ""

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
    have. Without it they start fresh codec state, both ends of every link alike.
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



class ControlRecord(_Record, forbid_unknown_fields=True):
    """The step protocol's state, written by the coordinator after every decision.

    committed_step was applied everywhere under committed_version; the next step,
    committed_step + 1, runs under plan_version. A peer holding a prepared step that is not
    committed while plan_version moved on aborts it (discards its gradients) and reruns it.
    checkpoint_step: peers publish their stage state of this step for the coordinator to fetch.
    done: the run reached its last step; peers exit.
    probe_address: the coordinator's data port, which checks a joining peer's reachability.
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

