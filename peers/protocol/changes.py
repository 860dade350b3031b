"""Why a plan looks as it does, as typed values: where each cell's state comes from, why it changed.

Code and tests decide on these fields (`source.kind is SourceKind.PEER`, `reason.lost[name]`);
the `text` of a reason and `str(source)` exist for people (`swarm status`, the logs).
"""
from __future__ import annotations

from enum import Enum

import msgspec

from .validation import FiniteFloat, Name, NonNegativeInt, PositiveInt, RecordError

__all__ = ["SourceKind", "StateSource", "Departure", "PlanChange", "PlanReason", "Resplit"]


class SourceKind(str, Enum):
    """Where a grid cell's peer gets its stage state at the plan's start step."""

    KEEP = "keep"              # it holds the stage at start_step - 1 already
    PEER = "peer"              # fetch it from a live replica of the stage (the donor)
    CHECKPOINT = "checkpoint"  # from the coordinator's state server
    INIT = "init"              # fresh weights from the run's seed
    LAYERS = "layers"          # the layer split changed: its layers from the old stages' holders (`Resplit`)


class StateSource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A cell's state source; `donor` names the replica to fetch from, for `SourceKind.PEER` only."""

    kind: SourceKind
    donor: str = ""

    def __post_init__(self) -> None:
        if (self.kind is SourceKind.PEER) != bool(self.donor):
            raise RecordError("state source field 'donor' must name a peer exactly when kind is 'peer'")

    def __str__(self) -> str:
        return f"peer {self.donor}" if self.kind is SourceKind.PEER else self.kind.value


class Departure(str, Enum):
    """Why a grid member cannot finish the step in flight."""

    EXPIRED = "expired"      # its record expired: it stopped heartbeating (crashed, SIGKILLed, cut off)
    LEFT = "left"            # it announced `leaving` (SIGTERM/SIGINT)
    REPORTED = "reported"    # it reported an error under the current plan
    TIMED_OUT = "timed_out"  # it heartbeats but did not prepare within commit_s: evicted
    NOT_BACK = "not_back"    # a resumed coordinator's plan member that has not rejoined
    SUSPECTED = "suspected"  # most of its stage's replicas flagged its gradients, step after step: evicted
    BLAMED = "blamed"        # the failures of one grid kept naming it (a silent or broken link): evicted

    def describe(self) -> str:
        """The phrase a person reads after the peer's name."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Departure.EXPIRED: "stopped heartbeating (record expired)",
    Departure.LEFT: "left",
    Departure.REPORTED: "reported an error",
    Departure.TIMED_OUT: "did not finish the step in time (evicted)",
    Departure.NOT_BACK: "is not back",
    Departure.SUSPECTED: "sent gradients its replicas kept refusing (evicted)",
    Departure.BLAMED: "was named by failure after failure of the same grid (evicted)",
}


class PlanChange(str, Enum):
    """What made the coordinator publish a plan."""

    FIRST = "first"        # the first plan of a fresh run
    RESUMED = "resumed"    # a resumed coordinator's first plan, from its checkpoint
    REPAIRED = "repaired"  # members were lost: the step in flight was aborted and the grid refilled
    JOINED = "joined"      # newcomers became standby; the grid is unchanged
    GROWN = "grown"        # standby peers filled a whole new pipeline replica
    RESPLIT = "resplit"    # the swarm's compute changed: layers (and peers) moved where the scheduler predicts a gain


class PlanReason(msgspec.Struct, forbid_unknown_fields=True):
    """Why a plan replaced the previous one.

    lost: members that left the grid and why; joined: peers new to this plan (grid or standby);
    rolled_back_to: the checkpoint step the run restarted from (0: no rollback);
    predicted_step_s: the scheduler's cost model's seconds per step for this plan.
    """

    change: PlanChange
    text: str
    lost: dict[Name, Departure] = {}
    errors: dict[Name, str] = {}
    joined: list[Name] = []
    rolled_back_to: NonNegativeInt = 0
    predicted_step_s: FiniteFloat | None = None


class Resplit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the layers of a re-split plan come from: the old split (`layers`, one count per old stage),
    the replicas that hold each old stage at the plan's start step - 1 (`holders[j]`), and the parameter
    checksum they agree on (`checksums[j]`, "" unverified). A `SourceKind.LAYERS` cell fetches every
    old stage that overlaps its new layers from one of its holders and keeps what it needs."""

    layers: list[PositiveInt]
    holders: list[list[Name]]
    checksums: list[str] = []

    def __post_init__(self) -> None:
        if len(self.holders) != len(self.layers) or not all(self.holders):
            raise RecordError("resplit field 'holders' must name at least one holder for each old stage")
        if self.checksums and len(self.checksums) != len(self.layers):
            raise RecordError("resplit field 'checksums' must have one entry per old stage")

    def donors(self) -> list[str]:
        """Every holder named, once."""
        return sorted({name for holders in self.holders for name in holders})
