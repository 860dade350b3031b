"""The control-plane protocol a volunteer speaks: DHT keys, record types, validation.

Three records live in the hivemind DHT, all signed (`RSASignatureValidator`: the writer's
`[owner:...]` marker is part of the subkey, so nobody can overwrite another node's record):

- `swarm.peers`, one subkey per peer: a `PeerRecord`, re-stored every heartbeat with a TTL of a few
  heartbeats, so a peer that dies silently vanishes on its own.
- `swarm.plan`, subkey of the coordinator: the current `PlanRecord` (versioned; peers act only on
  a version newer than theirs).
- `swarm.control`, subkey of the coordinator: the `ControlRecord` driving the step protocol: which
  step was committed last and which plan version governs the next step.

Records cross the wire as msgpack-able dicts. `from_wire` never trusts them: a missing or
mistyped field raises `RecordError` naming the field, and readers skip such records.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping

__all__ = [
    "PEERS_KEY", "PLAN_KEY", "CONTROL_KEY", "PEER_STATES", "CHANNELS",
    "RecordError", "PeerRecord", "PlanRecord", "ControlRecord",
    "peer_subkey", "subkey_name", "subkey_owner",
]

PEERS_KEY = "swarm.peers"
PLAN_KEY = "swarm.plan"
CONTROL_KEY = "swarm.control"
PEER_STATES = ("joining", "ready", "training", "standby", "leaving")
# The plan's codec per channel, named like the `--fwd/--bwd/--grad` flags.
CHANNELS = ("fwd", "bwd", "grad")

_OWNER = b"[owner:"


class RecordError(ValueError):
    """A DHT record that does not follow the protocol; the message names the field."""


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


@dataclass
class PeerRecord:
    """What a peer announces every heartbeat (and right after each step it prepares).

    step: the last step it applied; prepared_step/prepared_version: the step whose gradients it
    has reduced and holds ready to apply (the coordinator commits when every grid member has it).
    links: measured {peer name: {"bandwidth_gbps", "latency_ms"}}; bytes_sent / values_sent: per
    engine channel ("forward", "backward", "gradient"), cumulative, so wire bits per value show.
    dht_addrs: the peer's DHT multiaddrs (a restarted coordinator re-enters the DHT through them).
    """

    name: str
    address: str
    device: str
    tflops: float
    memory_gb: float
    state: str = "joining"
    heartbeat: float = 0.0
    links: dict[str, dict[str, float]] = field(default_factory=dict)
    dht_addrs: list[str] = field(default_factory=list)
    plan_version: int = 0
    step: int = 0
    stage: int = -1
    replica: int = -1
    param_checksum: str = ""
    prepared_step: int = 0
    prepared_version: int = 0
    loss: float | None = None
    bytes_sent: dict[str, int] = field(default_factory=dict)
    values_sent: dict[str, int] = field(default_factory=dict)
    dropped_stale: int = 0
    rejected: int = 0
    error: str = ""

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> "PeerRecord":
        record = _build(cls, value, "peer record")
        if record.state not in PEER_STATES:
            raise RecordError(f"peer record field 'state' must be one of {PEER_STATES}, got {record.state!r}")
        # The scheduler and the timeout hierarchy divide by these: one bad value must not stop the swarm.
        if not (_finite(record.tflops) and record.tflops > 0):
            raise RecordError(f"peer record field 'tflops' must be a positive number, got {record.tflops!r}")
        if not (_finite(record.memory_gb) and record.memory_gb >= 0):
            raise RecordError(f"peer record field 'memory_gb' must be a non-negative number, got {record.memory_gb!r}")
        if not _finite(record.heartbeat):
            raise RecordError(f"peer record field 'heartbeat' must be a finite number, got {record.heartbeat!r}")
        for peer, link in record.links.items():
            if not (isinstance(peer, str) and isinstance(link, dict)
                    and _finite(link.get("bandwidth_gbps")) and link["bandwidth_gbps"] > 0
                    and _finite(link.get("latency_ms")) and link["latency_ms"] >= 0):
                raise RecordError("peer record field 'links' must map names to {bandwidth_gbps > 0, latency_ms >= 0}")
        for name in ("bytes_sent", "values_sent"):
            if not all(isinstance(k, str) and isinstance(v, int) for k, v in getattr(record, name).items()):
                raise RecordError(f"peer record field {name!r} must map channel names to integers")
        if not all(isinstance(addr, str) for addr in record.dht_addrs):
            raise RecordError("peer record field 'dht_addrs' must be a list of multiaddr strings")
        return record


@dataclass
class PlanRecord:
    """A versioned assignment of peers to the stage x replica grid, starting at `start_step`.

    grid[s][r] names the peer holding stage s of pipeline replica r (DESIGN.md section 3);
    layers[s] its layer count; standby: live peers the plan gives no cell (yet).
    sources[name]: where that peer gets its stage state: "keep" (it holds it at start_step - 1),
    "peer:NAME" (fetch from a live replica; donors are spread), "checkpoint" (from the
    coordinator's state server at `checkpoint_address`) or "init" (fresh, from the seed).
    codecs[channel] for channel in CHANNELS; hyper: model, batch, micro_batches, lr, seed, data.
    reason: why this plan replaced the previous one (shown by `swarm status`).
    """

    version: int
    start_step: int
    grid: list[list[str]]
    layers: list[int]
    addresses: dict[str, str]
    sources: dict[str, str]
    codecs: dict[str, str]
    hyper: dict[str, Any]
    standby: list[str] = field(default_factory=list)
    checkpoint_address: str = ""
    reason: str = ""

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

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> "PlanRecord":
        plan = _build(cls, value, "plan record")
        if plan.version <= 0 or plan.start_step <= 0:
            raise RecordError("plan record fields 'version' and 'start_step' must be positive")
        if not all(isinstance(row, list) and all(isinstance(n, str) for n in row) for row in plan.grid):
            raise RecordError("plan record field 'grid' must be a list of lists of peer names")
        if not all(isinstance(n, int) and n > 0 for n in plan.layers):
            raise RecordError("plan record field 'layers' must be positive layer counts")
        widths = {len(row) for row in plan.grid}
        if not plan.grid or len(widths) != 1 or 0 in widths:
            raise RecordError("plan record field 'grid' must be a non-empty rectangle of peer names")
        if len(plan.layers) != plan.stages:
            raise RecordError(f"plan record field 'layers' has {len(plan.layers)} entries for {plan.stages} stages")
        members = plan.members()
        if len(set(members)) != len(members):
            raise RecordError("plan record field 'grid' names a peer twice")
        missing = [name for name in members if name not in plan.addresses or name not in plan.sources]
        if missing:
            raise RecordError(f"plan record fields 'addresses'/'sources' lack grid peers {missing}")
        if set(plan.codecs) != set(CHANNELS):
            raise RecordError(f"plan record field 'codecs' must name exactly {CHANNELS}")
        return plan


@dataclass
class ControlRecord:
    """The step protocol's state, written by the coordinator after every decision.

    committed_step was applied everywhere under committed_version; the next step,
    committed_step + 1, runs under plan_version. A peer holding a prepared step that is not
    committed while plan_version moved on aborts it (discards its gradients) and reruns it.
    checkpoint_step: peers publish their stage state of this step for the coordinator to fetch.
    done: the run reached its last step; peers exit.
    probe_address: the coordinator's data port, which checks a joining peer's reachability.
    plan_version 0 means no plan yet (the coordinator is waiting for peers).
    """

    plan_version: int
    committed_step: int
    committed_version: int
    total_steps: int
    loss: float | None = None
    tokens_per_s: float = 0.0
    checkpoint_step: int = 0
    done: bool = False
    probe_address: str = ""

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, value: Any) -> "ControlRecord":
        return _build(cls, value, "control record")


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "float": (int, float), "int": (int,), "bool": (bool,),
    "float | None": (int, float, type(None)),
}


def _build(cls: type, value: Any, what: str) -> Any:
    if not isinstance(value, Mapping):
        raise RecordError(f"{what} must be a mapping, got {type(value).__name__}")
    kwargs: dict[str, Any] = {}
    for spec in fields(cls):
        if spec.name not in value:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise RecordError(f"{what} lacks field {spec.name!r}")
            continue
        item = value[spec.name]
        kwargs[spec.name] = _check(item, str(spec.type), f"{what} field {spec.name!r}")
    return cls(**kwargs)


def _finite(value: Any) -> bool:
    """A real number (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(item: Any, annotation: str, where: str) -> Any:
    simple = _TYPES.get(annotation)
    if simple is not None:
        if isinstance(item, bool) and bool not in simple:
            raise RecordError(f"{where} must be {annotation}, got a bool")
        if not isinstance(item, simple):
            raise RecordError(f"{where} must be {annotation}, got {type(item).__name__}")
        return float(item) if annotation == "float" else item
    container = list if annotation.startswith("list") else dict
    if not isinstance(item, container):
        raise RecordError(f"{where} must be a {container.__name__}, got {type(item).__name__}")
    return item
