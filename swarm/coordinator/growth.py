"""Between two steps: what the grid does with the peers that are not in it, and with its layers.

Newcomers become standby (a `JOINED` plan: nobody in the grid is disturbed, see
`StageRunner.continues`); once standby peers can fill a whole new pipeline replica and the
hysteresis of `planning.growth_target` allows, the scheduler's `replan` grows the grid. A growth
the scheduler declined is not asked again until the live peers change. Otherwise, once the
hysteresis allows, the scheduler is asked (again only when the live peers change) whether moving
layers, and peers, would shorten the step enough to be worth it (`planning.resplit`).
"""
from __future__ import annotations

from collections.abc import Callable

from peers.protocol import Codecs, PeerRecord, PlanChange, PlanReason, PlanRecord, TrainingSpec

from .planning import MIN_STEPS_BETWEEN_CHANGES, Placement, grow, growth_target, resplit

__all__ = ["Growth"]


class Growth:
    """target_replicas: `--replicas` (None: as many as the peers fill); `on_event(text)`: the log."""

    def __init__(self, target_replicas: int | None, training: TrainingSpec, codecs: Codecs,
                 on_event: Callable[[str], None]) -> None:
        self.target_replicas = target_replicas or 1 << 30
        self.training = training
        self.codecs = codecs
        self.on_event = on_event
        self._declined: tuple[frozenset[str], int] | None = None  # (live peers, replicas) the scheduler turned down
        self._resplit_asked: frozenset[str] = frozenset()  # the live peers the last re-split question was about

    def placement(self, plan: PlanRecord, live: dict[str, PeerRecord], steps_since_change: int) -> Placement | None:
        """The next plan's placement after a commit under `plan`, or None to keep it as it is.

        live: the peers that may take a cell (grid members, standby and newcomers, none evicted).
        """
        newcomers = sorted(set(live) - set(plan.members()) - set(plan.standby))
        if newcomers:
            plan = PlanRecord.from_wire({**plan.to_wire(), "standby": [*plan.standby, *newcomers]})
        target = growth_target(plan, live, self.target_replicas, steps_since_change, self.training)
        if target is not None and (frozenset(live), target) != self._declined:
            grown = None
            try:
                grown = grow(plan, live, target, self.training, self.codecs, self.training.seed)
            except ValueError as error:  # the scheduler's ScenarioError / PlanError: keep the grid
                self.on_event(f"cannot grow the grid: {error}")
            if grown is not None:
                return grown
            self._declined = (frozenset(live), target)
        if not newcomers and steps_since_change >= MIN_STEPS_BETWEEN_CHANGES and frozenset(live) != self._resplit_asked:
            self._resplit_asked = frozenset(live)  # ask again only when the live peers change
            try:
                return resplit(plan, live, self.training, self.codecs, self.training.seed)
            except ValueError as error:  # the scheduler's ScenarioError / PlanError: keep the split
                self.on_event(f"cannot re-split the layers: {error}")
        if not newcomers:
            return None
        text = f"{', '.join(newcomers)} joined: standby until {plan.stages} standby peers can fill a new replica"
        reason = PlanReason(PlanChange.JOINED, text, joined=newcomers)
        return Placement([list(row) for row in plan.grid], list(plan.layers), list(plan.standby), reason)
