"""This peer's cell of the grid under one plan: its stage executor, its batch, two-phase steps.

The step protocol needs a step to be *prepared* (forward, backward, gradients averaged with the
replicas) on every peer before any peer *applies* it, so that a step lost to churn is dropped
everywhere: the runner prepares with `StageExecutor.run_step(..., apply=False)` and settles with
`apply_update()` / `discard_update()` when the coordinator commits or aborts.

A new plan gets a new runner (new neighbours, a new all-reduce group, fresh AQ-SGD memories on
both sides of every link), and the state moves over as the plan's `StateSource` says, unless the
plan only names newcomers standby (`continues`): then every member keeps its runner, with its
optimizer state, error-feedback residuals and AQ-SGD memories, and nobody is disturbed.
"""
from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import replace

import msgspec

from models import SequenceDataset, build_stage, get_config, param_checksum
from peers.attack import Attack
from peers.dataplane.transport import Message, PeerTimeout, Transport, TransportClosed
from peers.pipeline import OptimizerSettings, StageExecutor, StepResult
from peers.protocol import Link, PlanChange, PlanRecord, SourceKind, StateSource, StepBreakdown, Timeouts
from peers.security import CurveKeys
from peers.state_transfer import PartialState, StateTransferError, fetch_state_any

from .layer_state import old_stages_for, regroup
from .records import COORDINATOR_NAME
from .stage_state import StageState, codec_slot, pack_state, unpack_state
from .timeouts import FIRST_STEP_PATIENCE, WAIT_NESTING, first_step_allowance_s, loading_s

__all__ = ["StageRunner", "PlanAborted", "PlanLink"]

log = logging.getLogger(__name__)

_SLICE_S = 0.2


class PlanAborted(TransportClosed):
    """The plan changed (or the peer is stopping) while a step waited on the network."""


class StageRunner:
    """Builds the executor for (stage, replica) of `plan` and loads its state (see `sources`).

    attack: the peer's fault injector, a `swarm-peer join --attack` spec (`peers.attack`), used
    while this peer is the attack's replica of its stage. keys: this peer's curve keys in a swarm
    with a swarm key (state is fetched as a curve client of the donor's key in `plan.keys`).
    """

    def __init__(self, plan: PlanRecord, name: str, transport: Transport, dataset: SequenceDataset,
                 previous: StageRunner | None, device: str, abort: threading.Event,
                 attack: str | None = None, keys: CurveKeys | None = None,
                 on_link: Callable[[str, Link], None] | None = None) -> None:
        position = plan.position(name)
        if position is None:
            raise ValueError(f"{name!r} has no cell in plan {plan.version}")
        self.plan = plan
        self.name = name
        self.stage, self.replica = position
        self.dataset = dataset
        self.keys = keys
        self.on_link = on_link  # (peer name, the link a state transfer from it measured)
        self.training = plan.training
        assert plan.training.timeouts is not None  # a published plan always carries them
        self.timeouts: Timeouts = plan.training.timeouts
        column = [row[self.replica] for row in plan.grid]
        module = build_stage(get_config(self.training.model), plan.layers, self.stage, seed=self.training.seed,
                             device=device)
        self.link = PlanLink(transport, plan.version, abort, self.timeouts.message_s,
                             first_step_allowance_s(self.timeouts, plan.sources))
        self.executor = StageExecutor(
            module, stage_index=self.stage, num_stages=plan.stages, transport=self.link,
            prev=column[self.stage - 1] if self.stage > 0 else None,
            next=column[self.stage + 1] if self.stage < plan.stages - 1 else None,
            group=list(plan.grid[self.stage]), codecs=plan.codecs, micro_batches=self.training.micro_batches,
            optimizer=OptimizerSettings(lr=self.training.lr, warmup_steps=self.training.warmup_steps),
            timeout=self.timeouts.message_s, seed=self.training.seed,
            delta_capacity=min(dataset.train_ids.numel(), self.training.batch * self.training.steps),
            compute_dtype=self.training.dtype, aggregate=self.training.aggregate,
            attack=Attack.parse(attack) if attack else None)
        self._prepared: tuple[StepResult, float] | None = None  # the prepared step and when it was ready
        self.breakdown: StepBreakdown | None = None  # of the last step applied
        self._load(plan.sources[name], previous)

    def continues(self, plan: PlanRecord, name: str) -> bool:
        """Whether `plan` can keep this runner: it only added standby peers (`PlanChange.JOINED`), so the
        grid, layers, codecs and spec are this plan's and this peer keeps its cell at the same step.

        Every member decides alike (they read the same plans), so both ends of every link keep their
        codec memories. A JOINED plan is published together with the commit it follows, so no step
        of the old plan can be in flight: nothing half-sent is left in any memory.
        """
        old = self.plan
        return (plan.reason.change is PlanChange.JOINED and plan.grid == old.grid and plan.layers == old.layers
                and plan.codecs == old.codecs and plan.sources.get(name) == StateSource(SourceKind.KEEP)
                and msgspec.structs.replace(plan.training, timeouts=None)
                == msgspec.structs.replace(old.training, timeouts=None)
                and self.executor.pending_step is None and self._applied == plan.start_step - 1)

    def adopt(self, plan: PlanRecord, abort: threading.Event) -> None:
        """Carry on under `plan` (see `continues`): its version stamps, abort event and timeouts."""
        assert plan.training.timeouts is not None
        self.plan, self.training, self.timeouts = plan, plan.training, plan.training.timeouts
        self.link = PlanLink(self.link.transport, plan.version, abort, self.timeouts.message_s)
        self.executor.transport = self.link
        self.executor.averager.transport = self.link
        self.executor.timeout = self.executor.averager.timeout = self.timeouts.message_s

    @property
    def applied_step(self) -> int:
        """The last step whose update this runner's state holds."""
        return self._applied

    def suspects(self) -> dict[str, int]:
        """Peers this runner's all-reduce flagged (name -> steps): unusable or outlier gradient shares."""
        return dict(self.executor.averager.suspects)

    def prepare(self, step: int) -> StepResult:
        """Run `step` up to (not including) the optimizer update; raises on timeout or abort."""
        batch = None
        if self.stage in (0, self.plan.stages - 1):
            batch = self.dataset.train_batch(step, self.training.batch, self.training.seed)
            batch = batch.chunk(self.plan.replicas)[self.replica]
        result = self.executor.run_step(step, batch, apply=False)
        self.link.warm = True
        self._prepared = (result, time.monotonic())
        return result

    def apply(self, step: int) -> None:
        """Apply the prepared `step`: the coordinator committed it."""
        if self.executor.pending_step != step:
            raise RuntimeError(f"told to apply step {step}, but the prepared step is {self.executor.pending_step}")
        self.executor.apply_update()
        self._applied = step
        if self._prepared is not None:
            result, prepared_at = self._prepared
            times = result.times
            self.breakdown = StepBreakdown(step, round(times.compute_s(result.seconds), 4),
                                           round(times.wait_forward_s, 4), round(times.wait_backward_s, 4),
                                           round(times.allreduce_s, 4), round(time.monotonic() - prepared_at, 4))

    def discard(self) -> None:
        """Drop a prepared step: the coordinator aborted it (or the plan moved on)."""
        self.executor.discard_update()

    def checksum(self) -> str:
        return self.executor.param_checksum()

    def blob(self) -> bytes:
        """This stage's state after `applied_step`, as donors and checkpoints carry it."""
        return pack_state(self.stage, self.plan.layers, self._applied, self.executor.state_dict())

    def codec_blob(self) -> bytes:
        """This cell's codec state after `applied_step`, as checkpoints carry it (at `codec_slot`)."""
        return pack_state(self.stage, self.plan.layers, self._applied, self.executor.codec_state())

    def _load(self, source: StateSource, previous: StageRunner | None) -> None:
        self._applied = self.plan.start_step - 1
        self.loaded_bytes, self.load_seconds = 0, 0.0  # state fetched over the network (metrics)
        if source.kind is SourceKind.INIT:
            return
        if source.kind is SourceKind.LAYERS:
            self._load_layers(previous)
            return
        if source.kind is SourceKind.KEEP:
            if previous is None or previous.stage != self.stage or previous.applied_step != self._applied:
                raise RuntimeError(f"plan {self.plan.version} says keep stage {self.stage} at step {self._applied}, "
                                   "but this peer does not hold it")
            self.executor.load_state_dict(previous.executor.state_dict())
            return
        if source.kind is SourceKind.CHECKPOINT:
            donors = {self.plan.checkpoint_address: self.plan.keys.get(COORDINATOR_NAME)}
        else:  # the named donor first, then the stage's other holders, should it die mid-transfer
            names = dict.fromkeys([source.donor or "", *self.plan.donors_of(self.stage)])
            donors = {self.plan.addresses[name]: self.plan.keys.get(name) for name in names}
        started = time.monotonic()
        self.executor.load_state_dict(self._fetch(donors, source, self.stage).state)
        if source.kind is SourceKind.CHECKPOINT and self.plan.codec_state:  # every cell resumes its own
            try:
                self.executor.load_codec_state(self._fetch(donors, source, codec_slot(self.stage, self.replica)).state)
            except ValueError as error:
                raise RuntimeError(f"the checkpoint's codec state of this cell does not fit: {error}") from None
        self.load_seconds = time.monotonic() - started
        expected = self.plan.checksums[self.stage] if self.plan.checksums else ""
        if source.kind is SourceKind.PEER and expected and self.checksum() != expected:
            raise RuntimeError(f"the state of stage {self.stage} from {source.donor} has parameter checksum "
                               f"{self.checksum()}, but its replicas agree on {expected}: refusing it")

    def _load_layers(self, previous: StageRunner | None) -> None:
        """A cell of a re-split plan: each old stage that holds some of this stage's parameters, from this
        peer's previous runner when it was that stage, else from one of its holders (spread by name),
        checked against the checksum its holders agree on; then the layers this stage keeps."""
        resplit = self.plan.resplit
        if resplit is None:
            raise RuntimeError(f"plan {self.plan.version} re-splits layers but names no old split")
        config, started = get_config(self.training.model), time.monotonic()
        states: dict[int, StageState] = {}
        for old in old_stages_for(resplit.layers, self.plan.layers, self.stage):
            if previous is not None and (previous.stage, previous.applied_step, previous.plan.layers) == (
                    old, self._applied, resplit.layers):
                states[old] = StageState(old, list(resplit.layers), self._applied, previous.executor.state_dict())
                continue
            holders = resplit.holders[old]
            donor = holders[zlib.crc32(self.name.encode()) % len(holders)]  # where fetch_state_any starts
            states[old] = self._fetch({self.plan.addresses[name]: self.plan.keys.get(name) for name in holders},
                                      StateSource(SourceKind.PEER, donor), old, layers=resplit.layers,
                                      spread_key=self.name)
            expected = resplit.checksums[old] if resplit.checksums else ""
            module = build_stage(config, resplit.layers, old, seed=self.training.seed, device="cpu")
            module.load_state_dict(states[old].state["model"])
            if expected and param_checksum(module) != expected:
                raise RuntimeError(f"old stage {old} from {donor} has parameter checksum {param_checksum(module)}, "
                                   f"but its holders agree on {expected}: refusing it")
        self.executor.load_state_dict(regroup(config, states, self.plan.layers, self.stage))
        self.load_seconds = time.monotonic() - started

    def _fetch(self, donors: dict[str, str | None], source: StateSource, slot: int,
               layers: list[int] | None = None, spread_key: str = "") -> StageState:
        """The blob at `slot` (a stage, or this cell's codec state) of start_step - 1 under the split `layers`
        (default: this plan's) from the first of `donors` that serves it (address -> curve key; in order, or
        from one `spread_key` picks); a donor may publish it a moment later. A donor that stalls is left for
        the next, which continues its chunks; the whole transfer gets `Timeouts.state_s` per donor."""
        layers = list(self.plan.layers) if layers is None else list(layers)
        timeouts = self.timeouts
        deadline = time.monotonic() + loading_s(timeouts)
        partial, last = PartialState(), "no answer"
        while time.monotonic() < deadline:
            if self.link.aborted():
                raise PlanAborted("plan changed while fetching state")
            try:
                blob = fetch_state_any(donors, slot, spread_key=spread_key,
                                       timeout=timeouts.state_s, stall_timeout=timeouts.message_s, keys=self.keys,
                                       partial=partial, on_link=self._measured)
                state = unpack_state(blob)
                if state.step == self._applied and state.layers == layers:
                    self.loaded_bytes += len(blob)
                    return state
                last = f"it serves step {state.step}, layers {state.layers}"
            except (StateTransferError, ValueError) as error:
                last = str(error)
            time.sleep(_SLICE_S)
        raise PeerTimeout(f"could not load stage {self.stage} at step {self._applied} from {source}: {last}",
                          peer=source.donor or "")

    def _measured(self, address: str, gbps: float, latency_ms: float) -> None:
        """A transfer from a peer of this plan measured the link to it (the checkpoint's is no peer link)."""
        name = next((n for n, a in self.plan.addresses.items() if a == address), None)
        if self.on_link is not None and name is not None and name != self.name:
            log.info("%s: the state transfer from %s measured its link: %.1f Mbit/s, %.1f ms one way", self.name, name,
                     gbps * 1e3, latency_ms)
            self.on_link(name, Link(bandwidth_gbps=max(round(gbps, 6), 1e-6), latency_ms=round(latency_ms, 3)))


class PlanLink:
    """The transport as the executor of one plan sees it: only that plan's messages, abortable.

    Receives wait in short slices so a plan change (or shutdown) interrupts a step at once
    instead of after the message timeout. Messages of other plan versions never get here: the
    daemon adopts each plan with `ZmqTransport.set_plan_version`, which purges the old ones.
    """

    def __init__(self, transport: Transport, version: int, abort: threading.Event, timeout: float,
                 loading: float = 0.0) -> None:
        self.transport = transport
        self.name = transport.name
        self._version = version
        self._abort = abort
        self._timeout = timeout
        self._loading = loading  # seconds the plan's members may spend loading state before the first step
        self.warm = False  # until this runner's first step prepared: its own and its neighbours' first calls are slow

    def aborted(self) -> bool:
        return self._abort.is_set()

    def send(self, to: str, message: Message) -> None:
        """Send stamped with this plan's version: the one place a data message gets its plan version
        (the engine knows no plans; a late message of this plan reaches no later plan's step)."""
        self.transport.send(to, replace(message, plan_version=self._version))

    def recv(self, sender: str, kind: str, step: int, index: int, timeout: float | None = None) -> Message:
        """A message of this plan; the wait is `timeout` (message_s) times the kind's `WAIT_NESTING`; for the
        runner's first step, `FIRST_STEP_PATIENCE` times that (kernels load, caches fill) plus the time the
        plan's members may spend loading state (`first_step_allowance_s`)."""
        wait = (self._timeout if timeout is None else timeout) * WAIT_NESTING.get(kind, 1)
        if not self.warm:
            wait = wait * FIRST_STEP_PATIENCE + self._loading
        deadline = time.monotonic() + wait
        while True:
            if self._abort.is_set():
                raise PlanAborted(f"plan {self._version} was replaced while waiting for {kind!r} from {sender!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerTimeout(f"no {kind!r} from {sender!r} for step {step} (index {index}) within "
                                  f"{wait:.0f} s", peer=sender)
            try:
                return self.transport.recv(sender, kind, step, index, timeout=min(_SLICE_S, remaining))
            except PeerTimeout:
                continue
