"""The coordinator daemon: plan the swarm, drive the step protocol, survive churn, checkpoint.

One loop, woken by each step report (`step_channel`) and each read of the DHT (`RECORDS_READ_S` apart):
1. no plan yet: wait for enough `ready` peers, place them (the scheduler; with `--resume` the live
   peers' or the checkpoint's grid, see `resume`) and publish the next plan version.
2. a grid member is gone (record expired, `leaving`, an error naming whom to blame, no prepare within `commit_s`):
   abort the step in flight, publish a repaired plan that restarts it, with a reason; no step is half-applied.
3. every member prepared step s under the current version: commit s (peers apply it), checkpoint
   if due (`Checkpointer`), and between steps admit newcomers or re-split layers (`Growth`).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import msgspec

from models import get_config
from peers.daemon.corpus import CORPUS_SLOT
from peers.daemon.records import CoordinatorPin, publish_coordinator
from peers.daemon.stage_state import codec_slot
from peers.daemon.timeouts import FIRST_STEP_PATIENCE, PEER_TTL_S, first_step_allowance_s
from peers.dataplane.zmq_transport import ZmqTransport
from peers.protocol import (
    PLAN_KEY,
    ControlRecord,
    Departure,
    PeerRecord,
    PlanChange,
    PlanReason,
    PlanRecord,
    SourceKind,
    StateSource,
    Timeouts,
)
from peers.security import Admission

from .admission import Gatekeeper
from .blame import Blame, Evictions
from .calibration import calibration
from .checkpoint import Checkpoint, read_latest, write_json_atomic
from .checkpointer import Checkpointer, Skipped
from .config import CoordinatorConfig, given_placement
from .growth import Growth
from .planning import (
    Placement,
    describe_losses,
    describe_reason,
    first_placement,
    fit_batch,
    plan_donors,
    plan_sources,
    predicted_step_s,
    refill,
    restart_lost_stages,
    scenario_from_records,
    stage_holders,
    transfers,
)
from .report import REPORT_LOG, RunReport
from .resume import resume_start
from .startup import PEERS_FILE, announce_corpus, load_secrets, start_dht
from .step_channel import ControlWriter, RecordReader, StepReports
from .suspects import SuspectTracker
from .timeouts import plan_timeouts

__all__ = ["Coordinator", "POLL_S"]


POLL_S = 0.05
# How often the DHT's peer records are re-read: for joins, departures and expiry (records live 10 s).
# Steps do not wait on it (their reports come over the step channel), and every read costs CPU in
# every process of the swarm, so it runs at a pace of seconds, not of steps.
RECORDS_READ_S = 0.5
_READY_STATES = ("ready", "training", "standby")


class Coordinator:
    """Runs one swarm to `config.steps`; `run(stop)` returns the exit code (0 when finished).

    `on_event(text)` receives one human-readable line per decision (plan changes, commits,
    checkpoints); the CLI prints them, the demo feeds its live view.
    """

    def __init__(self, config: CoordinatorConfig, on_event: Callable[[str], None] = print) -> None:
        self.config = config
        self.on_event = on_event
        self.training, self.corpus = announce_corpus(config.training)  # served to peers that lack --data
        self.codecs = config.codecs
        self.dir = config.checkpoint_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.report = RunReport(self.dir / REPORT_LOG, resume=config.resume)  # continues the log on --resume
        resumable = config.resume and (self.dir / "latest.json").exists()
        self.checkpoint: Checkpoint | None = read_latest(self.dir) if resumable else None
        self.plan: PlanRecord | None = None
        self.timeouts: Timeouts | None = None
        self.committed_step = self.checkpoint.step if self.checkpoint else 0
        self.committed_version = 0
        self.checkpoint_step = 0
        self.loss: float | None = None
        self.tokens_per_s = 0.0
        self.last_change_step = 0
        self.step_clock = self.started = time.monotonic()
        self.evicted = Evictions(config.readmit_after_s)  # timed out, blamed or suspected: out until a back-off ends
        self.blame = Blame(config.evict_after)
        self._waiting_for = ""  # why the plan cannot be repaired yet, as said last
        self.suspects = SuspectTracker(config.evict_suspects, self.report.event, on_event)
        self.growth = Growth(config.replicas, self.training, self.codecs, on_event)
        self.tokens_per_step = self.training.batch * get_config(self.training.model).context

    def run(self, stop: threading.Event) -> int:
        self.dht = start_dht(self.config, self.on_event)
        self.states: ZmqTransport | None = None
        self.reader: RecordReader | None = None
        self.writer: ControlWriter | None = None
        try:
            self.secrets = load_secrets(self.config, self.dht, self.on_event)
            self.gatekeeper = Gatekeeper(self.dir, self.secrets.keys, self.secrets.token, self.config.allowed_keys,
                                         self.on_event, resume=self.config.resume)
            self.admission = Admission()
            self.checkpoints = Checkpointer(self.dir, self.secrets.keys)
            self.states = ZmqTransport("coordinator", host=self.config.host, port=0, keys=self.secrets.keys,
                                       admission=self.admission if self.secrets.keys else None)
            self.reports = StepReports(self.states, self.gatekeeper)  # woken by each peer's step report
            self.reader = RecordReader(self.gatekeeper, self.dht, lambda: self.plan.members() if self.plan else (),
                                       self.reports.wake, RECORDS_READ_S)  # the DHT's view, read off this loop
            self.writer = ControlWriter(self.dht)  # and the control record stored off it
            addrs = self.dht.multiaddrs()
            if not self.config.host.startswith("127."):  # volunteers elsewhere need a routable address first
                addrs.sort(key=lambda addr: addr.startswith("/ip4/127."))
            token = {"join_token": self.secrets.token.encode()} if self.secrets.token else {}
            write_json_atomic(self.dir / "coordinator.json", {"initial_peers": addrs, **token,
                                                              **self.report.serve(self)})
            self.on_event(f"DHT node up; peers join with: swarm-peer join --initial-peers {addrs[0]}")
            self.on_event(f"initial peers written to {self.dir / 'coordinator.json'}")
            if self.corpus is not None:
                self.states.serve_state(CORPUS_SLOT, self.corpus)
            if self.checkpoint is not None:
                self._serve(self.checkpoint)
                self.on_event(f"resuming from the checkpoint of step {self.checkpoint.step} ({self.checkpoint.path})")
            last_publish = 0.0
            while not stop.is_set():
                if self._tick():
                    return 0
                if time.monotonic() - last_publish > 1.0:
                    self._publish_control()
                    last_publish = time.monotonic()
                self.reports.wait(POLL_S)
            self.on_event("interrupted: stopping (peers keep their state; restart with --resume)")
            return 130
        finally:
            self.report.close()  # stops the live views (dashboard, metrics) too, before the DHT goes
            for opened in (self.reader, self.writer, self.states):
                if opened is not None:
                    opened.close()
            self.dht.close()

    # ---- one decision ------------------------------------------------------------------------

    def _tick(self) -> bool:
        self._collect_checkpoints(self.checkpoints.collect())
        for name in self.evicted.released():
            self.on_event(f"{name}'s eviction back-off ended: it may rejoin")
        if self.reader is None or self.reader.records is None:  # the first read of the DHT is not done yet
            return False
        records = self.reports.merged(self.reader.records)
        if self.gatekeeper.secure:
            self.admission.update({name: admitted.key for name, admitted in self.gatekeeper.admitted.items()})
        if self.plan is None:
            self._maybe_start(records)
            return False
        lost = self._lost(records)
        if lost:
            self._replan(records, lost)
            return False
        step = self.committed_step + 1
        members = self.plan.members()
        if all(records[m].prepared_step == step and records[m].prepared_version == self.plan.version for m in members):
            return self._commit(step, records)
        return False

    def _maybe_start(self, records: dict[str, PeerRecord]) -> None:
        ready = {n: r for n, r in records.items() if r.state in _READY_STATES}
        if self.config.resume:
            previous = CoordinatorPin(self.dht.owner).plan(self.dht)  # the last plan before the restart
            start = resume_start(previous, self.checkpoint, ready, self.training, self.codecs, self.config.min_peers,
                                 patient=time.monotonic() - self.started < PEER_TTL_S)
            if start is None:
                return
            if start.rolled_back_to is not None:
                self.report.rollback(start.rolled_back_to)
            for step in range(len(self.report.steps) + 1, start.committed + 1):  # committed, then the crash
                self.report.step(step, start.version, {}, 0.0, 0.0)
            self.plan = previous if start.origin is None else None  # the holders of its cells keep their state
            self.committed_step, self.committed_version = start.committed, start.version
            self._publish_plan(fit_batch(start.placement, self.training), ready, origin=start.origin,
                               start_step=start.start_step)
            return
        if len(ready) < self.config.min_peers:
            return
        if self.config.plan is not None:  # --plan: exactly that grid and layer split, once all its peers are ready
            if (given := given_placement(self.config.plan, ready)) is not None:
                self._publish_plan(given, ready, origin=SourceKind.INIT, start_step=1)
            return
        try:
            scenario = scenario_from_records(ready, self.training, self.codecs, self.config.stages,
                                             self.config.replicas)
            placement = fit_batch(first_placement(ready, scenario, self.training.seed), self.training)
        except ValueError as error:  # the scheduler's ScenarioError / PlanError, e.g. not enough memory
            if self.report.events and self.report.events[-1].get("why") == str(error):
                return  # said so already; keep waiting quietly
            self.report.event("cannot_plan", why=str(error))
            self.on_event(f"cannot plan with the {len(ready)} peers announced yet: {error}; waiting for more")
            return
        self._publish_plan(placement, ready, origin=SourceKind.INIT, start_step=1)

    def _lost(self, records: dict[str, PeerRecord]) -> dict[str, Departure]:
        """Grid members that cannot finish the step in flight, and why."""
        assert self.plan is not None and self.timeouts is not None
        lost: dict[str, Departure] = {}
        for name in self.plan.members():
            record = records.get(name)
            if record is None:
                lost[name] = Departure.EXPIRED
            elif record.state == "leaving":
                lost[name] = Departure.LEFT
            elif record.error and record.plan_version == self.plan.version:
                lost[name] = Departure.REPORTED
            elif name in self.evicted:
                lost[name] = self.evicted.cause(name)
        patience_s = self.timeouts.commit_s
        if self.committed_step + 1 == self.plan.start_step:  # kernels load, members may load state
            patience_s = patience_s * FIRST_STEP_PATIENCE + first_step_allowance_s(self.timeouts, self.plan.sources)
        if not lost and time.monotonic() - self.step_clock > patience_s:
            step = self.committed_step + 1
            for name in self.plan.members():
                if (records[name].prepared_step, records[name].prepared_version) != (step, self.plan.version):
                    lost[name] = Departure.TIMED_OUT
                    self.evicted.add(name, Departure.TIMED_OUT)
        return lost

    def _replan(self, records: dict[str, PeerRecord], lost: dict[str, Departure]) -> None:
        assert self.plan is not None
        live = self._live(records)
        # A member that reported an error keeps its cell only if it still holds its stage at the
        # committed step; one that failed to take up its cell (e.g. a state fetch timed out) would
        # be told to "keep" state it never loaded, and fail again forever: refill it instead.
        reported = {n for n, why in lost.items() if why is Departure.REPORTED and n in live
                    and (live[n].stage, live[n].step) == ((self.plan.position(n) or (-1, -1))[0], self.committed_step)}
        if reported and len(reported) == len(lost) and (culprit := self.blame.failed(
                self.plan.grid, [records[n].blamed or n for n in reported])) is not None:
            lost[culprit] = Departure.BLAMED  # the same grid failed --evict-after times, naming it most
            self.evicted.add(culprit, Departure.BLAMED)
            reported.discard(culprit)
        dead = {n: why for n, why in lost.items() if n not in reported}
        try:
            placement = refill(self.plan, live, dead, self.training, self.codecs, self.training.seed) if dead \
                else Placement([list(row) for row in self.plan.grid], list(self.plan.layers), list(self.plan.standby),
                               PlanReason(PlanChange.REPAIRED, describe_losses(lost)))
        except (RuntimeError, ValueError) as error:  # ValueError: the scheduler's ScenarioError / PlanError
            if f"{error}" != self._waiting_for:  # once per reason, not on every tick
                self.on_event(f"cannot repair the plan yet: {error}")
            self._waiting_for = f"{error}"
            return
        step = self.committed_step + 1
        placement.reason.lost = dict(lost)
        placement.reason.errors = {n: records[n].error for n in lost if n in records and records[n].error}
        placement.reason.text = f"step {step} aborted: {placement.reason.text}"
        self._publish_plan(fit_batch(placement, self.training), records, origin=None, start_step=step)

    def _commit(self, step: int, records: dict[str, PeerRecord]) -> bool:
        assert self.plan is not None
        committed_plan = self.plan
        losses = {n: loss for n in committed_plan.grid[-1] if (loss := records[n].loss) is not None}
        now = time.monotonic()
        seconds, self.step_clock = now - self.step_clock, now
        self.loss = sum(losses.values()) / len(losses) if losses else None
        self.tokens_per_s = self.tokens_per_step / max(seconds, 1e-9)
        self.committed_step, self.committed_version = step, committed_plan.version
        due = step % self.config.checkpoint_every == 0 or step >= self.training.steps
        self.checkpoint_step = step if due else 0
        self.report.step(step, committed_plan.version, losses, self.tokens_per_s, seconds)
        self.report.observe(committed_plan, records)
        if (calibrated := calibration(committed_plan, step, self.report.steps, records, self.training,
                                      self.codecs)) is not None:
            self.report.event("calibrated", **calibrated)
            self.on_event(f"plan {committed_plan.version} on the compute its peers achieve: predicted "
                          f"{calibrated['calibrated_step_s']:.3g} s/step")
        self.evicted.update(self.suspects.judge(committed_plan, records, step), Departure.SUSPECTED)
        self.blame.succeeded()
        finished = step >= self.training.steps
        if not finished:
            self._admit(records, step)
        self._publish_control(done=False)
        loss_text = "-" if self.loss is None else f"{self.loss:.4f}"
        self.on_event(f"step {step}/{self.training.steps} committed (plan {committed_plan.version}): "
                      f"loss {loss_text}, {self.tokens_per_s:.0f} tokens/s")
        self.report.save()  # before the checkpoint: a checkpoint on disk implies its step is in the report
        assert self.timeouts is not None
        if due:
            self.checkpoints.start(step, committed_plan, self.timeouts.message_s)
        if finished:
            self._collect_checkpoints(self.checkpoints.wait(self.timeouts.message_s * (committed_plan.stages + 1)))
            self._publish_control(done=True)
            self.on_event(f"finished {step} steps; report: {self.report.path}; checkpoint: {self.report.checkpoint}")
            time.sleep(2 * POLL_S + 1.0)  # let peers read `done` before the DHT node goes away
        return finished

    def _admit(self, records: dict[str, PeerRecord], step: int) -> None:
        """Between steps: name newcomers standby, grow by a whole replica when hysteresis allows."""
        assert self.plan is not None
        placement = self.growth.placement(self.plan, self._live(records), step - self.last_change_step)
        try:
            if placement is not None:
                self._publish_plan(placement, records, origin=None, start_step=step + 1)
        except ValueError as error:  # a re-split whose old stages lost their holders: the plan stays
            self.on_event(str(error))

    def _live(self, records: dict[str, PeerRecord]) -> dict[str, PeerRecord]:
        """Peers that can take a cell now: announced ready, training or standby, and not evicted."""
        return {n: r for n, r in records.items() if r.state in _READY_STATES and n not in self.evicted}

    # ---- publishing --------------------------------------------------------------------------

    def _publish_plan(self, placement: Placement, records: dict[str, PeerRecord], *, origin: SourceKind | None,
                      start_step: int) -> None:
        """Publish `placement` as the next plan; origin: every cell's source (None: continue, see
        `assign_sources`)."""
        assert self.states is not None
        previous = self.plan
        members = [n for row in placement.grid for n in row]
        live = set(self._live(records))
        holders = None if previous is None else stage_holders(previous, records, self.committed_step,
                                                              self.committed_version, live)
        sources, resplit = plan_sources(placement.grid, placement.layers, previous, holders, origin)
        lost_state = origin is None and StateSource(SourceKind.CHECKPOINT) in sources.values()
        if lost_state and self.checkpoint is None:  # nothing to roll back to: the lost stages start from the seed
            sources, lost = restart_lost_stages(placement.grid, sources)
            placement.reason.text += f"; stages {lost} lost every replica before any checkpoint: seeded anew"
            self.report.event("stages_restarted", stages=lost, step=start_step)
        elif lost_state and self.checkpoint is not None:
            start_step = self.checkpoint.step + 1
            sources, resplit = dict.fromkeys(members, StateSource(SourceKind.CHECKPOINT)), None
            placement.layers = self.checkpoint.layers_for(placement.layers)  # the split its stages were saved under
            placement.reason.text += f"; a stage lost every replica: rolled back to checkpoint step {start_step - 1}"
            placement.reason.rolled_back_to = self.checkpoint.step
            self.committed_step = self.checkpoint.step
            self.report.rollback(self.checkpoint.step)
            self.checkpoints.invalidate()
        codec_state = (self.checkpoint is not None and self.checkpoint.codec_for(placement.grid)
                       and all(source.kind is SourceKind.CHECKPOINT for source in sources.values()))
        if placement.reason.predicted_step_s is None:
            placement.reason.predicted_step_s = predicted_step_s(placement, records, self.training, self.codecs)
        self.timeouts = plan_timeouts(placement, records, self.training, self.codecs, transfers(sources, resplit))
        published = CoordinatorPin(self.dht.owner).plan(self.dht)  # a resumed coordinator continues after it
        seen = [plan.version for plan in (published, previous) if plan] + [r.plan_version for r in records.values()]
        version = max([*seen, self.checkpoint.plan["version"] if self.checkpoint else 0]) + 1
        plan = PlanRecord(version=version, start_step=start_step, grid=placement.grid, layers=placement.layers,
                          addresses={n: records[n].address for n in [*members, *plan_donors(sources, resplit)]},
                          sources=sources, codecs=self.codecs,
                          training=msgspec.structs.replace(self.training, timeouts=self.timeouts),
                          reason=placement.reason, standby=placement.standby, checkpoint_address=self.states.address,
                          keys=self.gatekeeper.plan_keys([*members, *placement.standby]),
                          checksums=holders.checksums if holders and origin is None and not resplit else [],
                          codec_state=codec_state, resplit=resplit)
        publish_coordinator(self.dht, PLAN_KEY, plan.to_wire())
        write_json_atomic(self.dir / PEERS_FILE, {"dht_addrs": [a for r in records.values() for a in r.dht_addrs]})
        self.plan = plan
        self.last_change_step = start_step - 1
        self.step_clock = time.monotonic()
        self.report.plan(plan)
        self.report.save()
        self._publish_control()
        grid = " | ".join(" ".join(row) for row in plan.grid)
        self.on_event(f"plan {version} from step {start_step}: [{grid}]"
                      + (f" standby [{' '.join(plan.standby)}]" if plan.standby else "")
                      + f" -- {describe_reason(plan.reason)}")

    def _publish_control(self, done: bool = False) -> None:
        assert self.states is not None and self.writer is not None
        control = ControlRecord(plan_version=self.plan.version if self.plan else 0, committed_step=self.committed_step,
                                committed_version=self.committed_version, total_steps=self.training.steps,
                                loss=self.loss, tokens_per_s=self.tokens_per_s, checkpoint_step=self.checkpoint_step,
                                done=done, probe_address=self.states.address,
                                curve_key=self.secrets.keys.public if self.secrets.keys else "",
                                admitted=self.gatekeeper.admitted, training=self.training, codecs=self.codecs)
        self.reports.push(control, self.plan)  # peers learn it in one hop; the DHT copy is for the rest
        self.writer.offer(control, wait_s=10.0 if done else 0.0)  # `done` is in the DHT before this node goes

    # ---- checkpoints -------------------------------------------------------------------------

    def _serve(self, checkpoint: Checkpoint) -> None:
        """Serve `checkpoint` to peers restoring from it: each stage's state, each cell's codec state."""
        assert self.states is not None
        for stage, blob in checkpoint.stages.items():
            self.states.serve_state(stage, blob)
        for (stage, replica), blob in checkpoint.codec.items():
            self.states.serve_state(codec_slot(stage, replica), blob)

    def _collect_checkpoints(self, outcomes: list[Checkpoint | Skipped]) -> None:
        """Adopt the checkpoints the `Checkpointer` finished: serve them, name them in the report."""
        for outcome in outcomes:
            if isinstance(outcome, Skipped):
                self.on_event(f"checkpoint of step {outcome.step} skipped: {outcome.why}")
                self.report.event("checkpoint_skipped", step=outcome.step, stage=outcome.stage)
                continue
            self.checkpoint = outcome
            self._serve(outcome)
            self.report.checkpoint = str(outcome.path)
            self.report.save()
            self.on_event(f"checkpoint of step {outcome.step} written to {outcome.path}")
