"""Where a restarted coordinator (`--resume`) picks the run up: the live peers first, the checkpoint second.

A coordinator that died between two checkpoints leaves peers that still hold the committed state:
each keeps heartbeating under the last plan with its stage at the last step it applied. When every
stage of that plan still has a holder (`planning.stage_holders`, checksums agreeing), the run goes
on from their step: no step is lost or run twice. Peers that prepared that step but had not seen
its commit apply it first (the control record names it committed under the old version). Only
when some stage has no live holder does the run roll back to the checkpoint; with no checkpoint
yet, such stages start over from the seed (`planning.restart_lost_stages`).

The first peer records trickle in after a restart, so the decision waits until every member of
the last plan is back or `patience_s` has passed.
"""
from __future__ import annotations

from dataclasses import dataclass

from peers.protocol import Codecs, PeerRecord, PlanRecord, SourceKind, TrainingSpec

from .checkpoint import Checkpoint
from .planning import Placement, resumed_placement, stage_holders

__all__ = ["Start", "resume_start"]


@dataclass
class Start:
    """A resumed run's first plan: `placement` from `start_step`, its cells' sources (`origin`; None: the
    live holders keep or donate their state). The control record then names step `committed` of plan
    `version` committed (0 when restoring: nothing prepared may be applied)."""

    placement: Placement
    origin: SourceKind | None
    start_step: int
    committed: int
    version: int
    rolled_back_to: int | None = None


def resume_start(previous: PlanRecord | None, checkpoint: Checkpoint | None, ready: dict[str, PeerRecord],
                 training: TrainingSpec, codecs: Codecs, min_peers: int, patient: bool) -> Start | None:
    """The first plan of a resumed run, or None to wait for more peers.

    previous: the last plan the dead coordinator published (from the DHT); patient: whether to keep
    waiting for members of `previous` that are not back yet.
    """
    if previous is not None:
        if patient and not all(name in ready for name in previous.members()):
            return None
        start = _from_live_peers(previous, ready, training, codecs, need_every_stage=checkpoint is not None)
        if start is not None:
            return start
    if checkpoint is None:
        return None if previous is None or patient else _over_again(previous, ready, training, codecs)
    old = PlanRecord.from_wire(checkpoint.plan)
    if len(ready) < min(len(old.members()), min_peers):
        return None
    placement = resumed_placement(old, f"the checkpoint of step {checkpoint.step}", ready, training, codecs)
    if placement is None:  # a stage has nobody yet: wait for more peers
        return None
    return Start(placement, SourceKind.CHECKPOINT, checkpoint.step + 1, checkpoint.step, 0,
                 rolled_back_to=checkpoint.step)


def _from_live_peers(previous: PlanRecord, ready: dict[str, PeerRecord], training: TrainingSpec, codecs: Codecs,
                     need_every_stage: bool) -> Start | None:
    """Continue from the step the members of `previous` reached, if enough of them hold their stage."""
    following = [name for name in previous.members() if name in ready
                 and ready[name].plan_version == previous.version and ready[name].stage >= 0]
    if not following:
        return None
    step = max(ready[name].step for name in following)
    holders = stage_holders(previous, ready, step, previous.version, set(ready))
    if not any(holders.names) or (need_every_stage and not all(holders.names)):
        return None
    placement = resumed_placement(previous, f"the live peers at step {step}", ready, training, codecs)
    if placement is None:
        return None
    return Start(placement, None, step + 1, step, previous.version)


def _over_again(previous: PlanRecord, ready: dict[str, PeerRecord], training: TrainingSpec,
                codecs: Codecs) -> Start | None:
    """Nobody holds anything and there is no checkpoint: the run starts over from the seed."""
    placement = resumed_placement(previous, "nothing (no live holder, no checkpoint): from the seed", ready,
                                  training, codecs)
    return None if placement is None else Start(placement, SourceKind.INIT, 1, 0, 0, rolled_back_to=0)
