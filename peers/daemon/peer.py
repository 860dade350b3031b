"""The volunteer daemon behind `swarm-peer join`: announce, follow plans, train, leave cleanly.

The main (training) thread follows the control record: apply a committed step, switch to a newer plan
(discarding a step that was aborted), prepare the next step. It never calls the DHT once it trains: it reports
each step to the coordinator over the step channel (`peers.step_channel`) and waits on the `ControlFeed`, which
the coordinator's pushes and the heartbeat thread's DHT reads keep current. The heartbeat thread announces the
peer record (every heartbeat, and at once when the main thread asks), reads the control record and plan from the
DHT, and, when the plan changes or the peer is told to stop while a step waits on the network, aborts that wait
at once (`StageRunner`'s link). A third thread probes the links new plans give it (`links.PlanLinkProber`).

Start-up order matters for the operator: measure the device, open the data port, ask the coordinator to dial it
back (a NAT'd or firewalled peer is told what to open, not silently vanishing later), probe the links, announce.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import compression
from peers.dataplane import wire
from peers.dataplane.delay_line import DelayLine
from peers.dataplane.transport import BadMessage, Message, PeerTimeout, TransportClosed
from peers.dataplane.zmq_transport import ZmqTransport
from peers.dht import SwarmDHT, dht_time
from peers.metrics import MetricsServer, PeerMetrics, serve_metrics
from peers.pipeline import NonFiniteStep
from peers.profiling import declared_device, measure_device
from peers.protocol import ControlRecord, JoinToken, Link, PeerRecord, PlanRecord, RecordError
from peers.step_channel import read_control, report_payload
from peers.torch_threads import torch_threads

from .control_feed import ControlFeed
from .corpus import Datasets, default_cache_dir
from .credentials import Credentials
from .joining import (
    UnreachableError,
    await_admission,
    await_coordinator,
    check_data_port,
    join_dht,
    swarm_job,
    warm_codecs,
)
from .links import PlanLinkProber, links_to, measure_links, traffic_links
from .records import COORDINATOR_NAME, CoordinatorPin, write_peer
from .speed import measure_speed
from .stage_runner import StageRunner
from .stage_state import codec_slot
from .timeouts import HEARTBEAT_S, PEER_TTL_S

__all__ = ["PeerOptions", "PeerDaemon", "UnreachableError"]

log = logging.getLogger(__name__)

# How often the heartbeat thread reads the control record from the DHT while the coordinator's pushes
# are silent (a restarted coordinator, a broken step channel); while they arrive, once a heartbeat.
WATCH_S = 0.2

@dataclass(frozen=True)
class PeerOptions:
    """The flags of `swarm-peer join` (see `peers.cli`)."""

    initial_peers: tuple[str, ...]
    name: str
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 0
    advertise_host: str | None = None
    threads: int | None = None
    fused: bool = True
    metrics_port: int | None = None  # serve /metrics there (0: a free port); None: no metrics endpoint
    link_latency: str | None = None  # a `--link-latency` file for `peers.dataplane.delay_line` (harness only)
    attack: str | None = None  # a `--attack` spec: the fault injector of `peers.attack` (tests and demos only)
    join_token: JoinToken | None = None  # --join-token: admission to a swarm with a swarm key
    peer_key: Path | None = None  # --peer-key: this peer's curve key pair, kept (for --allow-keys swarms)
    cache_dir: Path | None = None  # --cache-dir: fetched corpora, the DHT identity (None: ~/.cache/swarm)
    tflops: float | None = None  # --tflops: the speed to announce instead of measuring it (None: measure)


class PeerDaemon:
    """One volunteer; `run(stop)` returns 0 when the run finished or the peer left on `stop`
    (SIGTERM/SIGINT: a volunteer leaving is normal operation), 130 if stopped before joining."""

    def __init__(self, options: PeerOptions, on_event: Callable[[str], None] = print) -> None:
        self.options = options
        self.on_event = on_event
        self._lock = threading.Lock()  # guards self.record
        # The plan being followed and the event that aborts its step, swapped as one tuple so the
        # watch thread never aborts a newer plan's step by mistake.
        self._current: tuple[PlanRecord | None, threading.Event] = (None, threading.Event())
        self._runner: StageRunner | None = None
        self._record: PeerRecord | None = None
        self._dht: SwarmDHT | None = None
        self._transport: ZmqTransport | None = None
        token = options.join_token
        self.pin = CoordinatorPin(fingerprint=token.coordinator_owner if token else None,
                                  peer_ids=[addr.rsplit("/p2p/", 1)[-1] for addr in options.initial_peers])
        self.credentials = Credentials(options.name, token, options.peer_key)
        self._datasets = Datasets(options.cache_dir or default_cache_dir(), options.name, self.credentials.keys,
                                  on_event)
        self._failed_version = 0  # a step failed under this plan: wait for the coordinator's next one
        self._flagged: Counter[str] = Counter()  # senders flagged by the all-reduce of runners replaced so far
        self.metrics = PeerMetrics(lambda: self._record, lambda: self._transport.stats() if self._transport else None,
                                   lambda: self._dht.requests_by_thread() if self._dht else {})
        self.feed = ControlFeed()
        self._announce_now = threading.Event()  # the main thread asks the heartbeat thread to announce
        self._channel = ""  # the coordinator address the step channel is connected to
        self._last_push = 0.0  # time.monotonic() of the coordinator's last push
        self._metrics_server: MetricsServer | None = None
        self._probed: dict[str, Link] = {}  # links as measured by probes and state transfers (guarded by _lock)
        self.prober = PlanLinkProber(options.name, self.credentials.keys, self._measured,
                                     lambda: set(self.record.links) | links_to(self.dht, options.name))

    @property
    def dht(self) -> SwarmDHT:
        """This peer's DHT node (joined at the start of `run`)."""
        assert self._dht is not None, "the peer has not joined the DHT yet"
        return self._dht

    @property
    def transport(self) -> ZmqTransport:
        """This peer's data port (opened at the start of `run`)."""
        assert self._transport is not None, "the peer has not opened its data port yet"
        return self._transport

    @property
    def record(self) -> PeerRecord:
        """What this peer announces (created at the start of `run`; guarded by `_lock`)."""
        assert self._record is not None, "the peer has not announced itself yet"
        return self._record

    def run(self, stop: threading.Event) -> int:
        options = self.options
        with torch_threads(options.threads):
            return self._run(stop)

    def _run(self, stop: threading.Event) -> int:
        options = self.options
        compression.set_fused(options.fused)
        # before this peer's DHT node and data plane compete for its CPU
        profile = (measure_device(options.device) if options.tflops is None
                   else declared_device(options.device, options.tflops))
        watcher = threading.Thread(target=self._watch, args=(stop,), name="heartbeat", daemon=True)
        try:
            if options.metrics_port is not None:
                self._metrics_server = serve_metrics(self.metrics.registry, options.host, options.metrics_port)
                self.on_event(f"{options.name}: metrics at {self._metrics_server.url}")
            self._dht = join_dht(options.initial_peers, options.host, options.cache_dir or default_cache_dir(),
                                 options.name)
            delays = DelayLine.load(options.link_latency) if options.link_latency else None
            self._transport = ZmqTransport(options.name, host=options.host, port=options.port,
                                           advertise_host=options.advertise_host, link_latency=delays,
                                           keys=self.credentials.keys,
                                           admission=self.credentials.admission if self.credentials.keys else None)
            curve_key, proof = self.credentials.announced(self.dht.owner)
            self._record = PeerRecord(name=options.name, address=self.transport.address, device=profile.device,
                                     tflops=profile.tflops, memory_gb=profile.memory_gb, state="joining",
                                     dht_addrs=self.dht.multiaddrs(), curve_key=curve_key, admission=proof)
            self._announce()
            watcher.start()
            how = "matmul" if options.tflops is None else "declared"  # how the first figure was had
            self.on_event(f"{options.name}: data port {self.transport.address}, {profile.tflops:.3f} TFLOPS ({how}) "
                          f"on {profile.device}, {profile.memory_gb:.1f} GB free")
            control = await_coordinator(self.pin, self.dht, options.name, self.on_event, stop)
            if control is None or not await_admission(self.pin, self.dht, self.credentials, control, options.name,
                                                      self.on_event, stop):
                return 130
            check_data_port(control, self.transport.address, self.credentials, options.name, self.on_event)
            control = self.pin.control(self.dht) or control
            self._measured(measure_links(self.dht, control, self.credentials))
            training, codecs = swarm_job(self.pin.plan(self.dht), control)
            self._update(codec_gvalues=warm_codecs(codecs, options.device, self.on_event, options.name),
                         tflops=profile.tflops if options.tflops is not None else measure_speed(
                             training, options.device, profile.tflops, options.cache_dir or default_cache_dir(),
                             self.on_event, options.name))
            threading.Thread(target=self.prober.run, args=(stop,), name="link-prober", daemon=True).start()
            self.feed.offer(control)
            self._connect_channel(control.probe_address)
            self._update(state="ready")
            self._report()
            return self._follow(stop)
        finally:
            stop.set()
            self._current[1].set()
            self.feed.wake()
            if watcher.is_alive():
                watcher.join(timeout=2 * HEARTBEAT_S)
            if self._record is not None and self._dht is not None:
                self._update(state="leaving")
                try:
                    self._announce()  # nobody waits for our heartbeat to expire
                except Exception as error:  # the DHT may already be gone; leaving still must finish
                    log.debug("could not announce leaving: %s", error)
            for opened in (self._transport, self._dht, self._metrics_server):
                if opened is not None:
                    opened.close()

    # ---- the main thread ---------------------------------------------------------------------

    def _follow(self, stop: threading.Event) -> int:
        prepared: tuple[int, int] | None = None  # (step, plan version) whose update is pending
        while not stop.is_set():
            seen, control, known_plan = self.feed.snapshot()
            if control is None or control.plan_version == 0:
                self.feed.wait(seen)
                continue
            runner = self._runner
            if (prepared and runner and control.committed_version == prepared[1]
                    and control.committed_step >= prepared[0]):
                runner.apply(prepared[0])
                self.metrics.committed()
                prepared = None
                self._update(step=runner.applied_step, param_checksum=runner.checksum(), prepared_step=0,
                             breakdown=runner.breakdown)
                if control.checkpoint_step == runner.applied_step:
                    self.transport.serve_state(runner.stage, runner.blob())
                    self.transport.serve_state(codec_slot(runner.stage, runner.replica), runner.codec_blob())
                self._report()
            if control.done and (runner is None or runner.applied_step >= control.committed_step):
                self.on_event(f"{self.options.name}: the run finished at step {control.committed_step}")
                return 0
            plan = self._current[0]
            if control.plan_version > (plan.version if plan else 0):  # only ever move to a newer plan
                if known_plan is not None and known_plan.version == control.plan_version:
                    prepared = self._switch(known_plan, prepared)
                else:  # the plan travels with the push, or the heartbeat thread reads it from the DHT
                    self.feed.wait(seen)
                continue
            runner = self._runner
            step = control.committed_step + 1
            if (plan is None or control.plan_version < plan.version or runner is None or prepared is not None
                    or runner.applied_step != control.committed_step or self._failed_version == plan.version
                    or step > control.total_steps):
                self.feed.wait(seen)  # a stale record, a failed step or a pending commit: woken by the next news
                continue
            prepared = self._prepare(runner, step)
        self.on_event(f"{self.options.name}: leaving the swarm (signal)")
        return 0

    def _prepare(self, runner: StageRunner, step: int) -> tuple[int, int] | None:
        try:
            result = runner.prepare(step)
        except (PeerTimeout, TransportClosed, BadMessage, NonFiniteStep) as error:
            # A neighbour's unusable message, or this peer's own NaN/inf, fails the step like a timeout:
            # reported, so the coordinator re-plans and every peer discards it; the process trains on.
            if isinstance(error, BadMessage):
                self.transport.count_rejection(error.reason, str(error))
                self._update(rejected=self.transport.stats()["rejected"])
                log.warning("step %d: refused a %s message from %s: %s", step, error.reason, error.sender, error.detail)
            elif isinstance(error, NonFiniteStep):
                log.warning("step %d aborted: %s", step, error)
            if not self._current[1].is_set():
                self._failed_version = runner.plan.version
                self.on_event(f"{self.options.name}: step {step} failed: {error}")
                self._update(error=f"step {step}: {error}", blamed=_blamed(error, self.options.name))
                self._report()
            return None  # a failed step never reached the optimizer: nothing to discard
        stats = result.stats
        self.metrics.prepared(result.seconds, result.tokens, result.loss)
        with self._lock:
            for channel, nbytes in stats.bytes.items():
                self.record.bytes_sent[channel] = self.record.bytes_sent.get(channel, 0) + nbytes
                self.record.values_sent[channel] = self.record.values_sent.get(channel, 0) + stats.values[channel]
        traffic = self.transport.stats()
        self._update(prepared_step=step, prepared_version=runner.plan.version, loss=result.loss,
                     dropped_stale=sum(traffic["dropped_stale"].values()), rejected=traffic["rejected"],
                     suspects=dict(self._flagged + Counter(runner.suspects())))
        self._report()
        return step, runner.plan.version

    def _switch(self, plan: PlanRecord, prepared: tuple[int, int] | None) -> tuple[int, int] | None:
        """Adopt `plan`, the one the control record names; returns the (dropped) pending step."""
        old = self._runner
        if prepared is not None and old is not None:
            old.discard()
            self.metrics.aborted()
        if old is not None and plan.donates(self.options.name):
            self.transport.serve_state(old.stage, old.blob())
        self.transport.set_plan_version(plan.version)  # purges what the old plan left unclaimed
        abort = threading.Event()
        self._current = (plan, abort)
        self.metrics.adopted(plan)
        self.credentials.adopt(plan)
        self.prober.follow(plan)
        position = plan.position(self.options.name)
        if old is not None and prepared is None and old.continues(plan, self.options.name):
            old.adopt(plan, abort)
            self._update(plan_version=plan.version, error="", blamed="")
            self._report()
            self.on_event(f"{self.options.name}: plan {plan.version}: kept its runner (stage {old.stage} replica "
                          f"{old.replica}, codec state and optimizer untouched)")
            return None
        if old is not None:  # replaced: what its all-reduce flagged stays in the record
            self._flagged.update(old.suspects())
        if position is None:
            self._runner = None
            self._update(state="standby", plan_version=plan.version, stage=-1, replica=-1, error="", blamed="")
            self.on_event(f"{self.options.name}: plan {plan.version}: standby")
            self._report()
            return None
        for name, address in plan.addresses.items():
            if name != self.options.name:
                self.transport.connect(name, address, server_key=plan.keys.get(name))
        try:
            self._runner = StageRunner(plan, self.options.name, self.transport, self._datasets.of(plan), old,
                                       self.options.device, abort, attack=self.options.attack,
                                       keys=self.credentials.keys, on_link=lambda n, link: self._measured({n: link}))
        except (PeerTimeout, TransportClosed, RuntimeError) as error:
            self.on_event(f"{self.options.name}: cannot take up plan {plan.version}: {error}")
            self._runner = None  # it holds no stage now: the coordinator must not name it a holder or donor
            self._update(plan_version=plan.version, stage=-1, replica=-1, error=f"plan {plan.version}: {error}",
                         blamed=_blamed(error, self.options.name))
            self._report()
            return None
        runner = self._runner
        if runner.loaded_bytes:
            self.metrics.state_loaded(plan.sources[self.options.name].kind.value, runner.loaded_bytes,
                                      runner.load_seconds)
        self._update(state="training", plan_version=plan.version, stage=runner.stage, replica=runner.replica,
                     step=runner.applied_step, param_checksum=runner.checksum(), prepared_step=0, error="",
                     blamed="")
        self._report()
        self.on_event(f"{self.options.name}: plan {plan.version}: stage {runner.stage} replica {runner.replica} "
                      f"from step {plan.start_step} ({plan.sources[self.options.name]})")
        return None

    # ---- the record --------------------------------------------------------------------------

    def _update(self, **fields: object) -> None:
        """Change this peer's record; a new state (or plan) is announced in the DHT at once, since
        `swarm status`, the dashboard and the coordinator's joins read it there; steps wait for the heartbeat."""
        with self._lock:
            news = any(key in ("state", "plan_version") and getattr(self.record, key) != value
                       for key, value in fields.items())
            for key, value in fields.items():
                setattr(self.record, key, value)
        if news:
            self._announce_now.set()

    def _measured(self, links: dict[str, Link]) -> None:
        """Links measured by the prober's probes (its thread) or a state transfer (the main one): announced next."""
        with self._lock:
            self._probed.update(links)
            self.record.links = {**self.record.links, **links}
        self._announce_now.set()

    def _announce(self) -> None:
        with self._lock:
            snapshot = PeerRecord.from_wire(self.record.to_wire())
        if write_peer(self.dht, snapshot, PEER_TTL_S):
            self.metrics.heartbeat()

    def _report(self) -> None:
        """Tell the coordinator at once (the step channel); the DHT has it by the next heartbeat, or at once
        when the step channel failed."""
        with self._lock:
            snapshot = PeerRecord.from_wire(self.record.to_wire())
        snapshot.heartbeat = dht_time()
        try:
            self.transport.send(COORDINATOR_NAME, Message(wire.STEP_REPORT, 0, 0, report_payload(self.dht, snapshot)))
        except (ValueError, PeerTimeout, TransportClosed) as error:  # the DHT copy still gets there
            log.warning("step report not sent: %s", error)
            self._announce_now.set()

    def _connect_channel(self, address: str) -> None:
        """The step channel to the coordinator's data port (again when a restarted coordinator moved it)."""
        self.transport.connect(COORDINATOR_NAME, address, server_key=self.credentials.coordinator_key or None,
                               on_push=self._pushed)
        self._channel = address

    def _pushed(self, message: Message) -> None:
        """A step_control from the coordinator (on the transport's loop thread): into the feed."""
        try:
            control, plan = read_control(message.payload)
        except (ValueError, RecordError) as error:
            self.transport.count_rejection("malformed", f"step control from the coordinator: {error}")
            return
        self._last_push = time.monotonic()
        self._take(control, plan)

    def _take(self, control: ControlRecord, plan: PlanRecord | None) -> None:
        """A control record (and the plan it names, when new), pushed or read: its admitted keys, then the feed."""
        try:
            self.credentials.refresh(control)
        except ValueError as error:  # a control record that binds one key to two names: keep the old set
            log.warning("ignoring the admitted keys of the control record: %s", error)
        if self.feed.offer(control, plan):
            self._abort_if_moved_on()

    def _abort_if_moved_on(self) -> None:
        """Abort the step in flight when the control record names a newer plan than the one it runs under."""
        plan, abort = self._current
        control = self.feed.snapshot()[1]
        if plan is not None and control is not None and control.plan_version > plan.version:
            abort.set()

    def _watch(self, stop: threading.Event) -> None:
        """Heartbeat (and announce at once when asked), read the control record and plan from the DHT:
        every WATCH_S while the coordinator's pushes are silent, once a heartbeat while they arrive, so
        a training swarm's DHT traffic does not grow with its step rate (each call costs every process
        of the swarm CPU, which on a shared host is the training's)."""
        announced = read = 0.0
        while not stop.is_set():
            if self._announce_now.is_set() or time.monotonic() - announced >= HEARTBEAT_S:
                self._announce_now.clear()
                with self._lock:  # what the training traffic showed of its links since the last heartbeat
                    self.record.links = {**self.record.links, **traffic_links(self._probed, self.transport.meter)}
                try:
                    self._announce()
                except Exception as error:  # a failed heartbeat is retried at the next one
                    log.warning("heartbeat failed: %s", error)
                announced = time.monotonic()
            pushed_lately = time.monotonic() - self._last_push < HEARTBEAT_S
            if not pushed_lately or time.monotonic() - read >= HEARTBEAT_S:
                self._read_control()
                read = time.monotonic()
            self._announce_now.wait(WATCH_S)
        self._current[1].set()

    def _read_control(self) -> None:
        """The DHT's control record, and the plan it names when that is new, into the feed."""
        _, known, plan = self.feed.snapshot()
        if known is None and self.credentials.keys is None:  # still joining: the main thread reads it
            return
        control = self.pin.control(self.dht)
        if control is None:
            return
        newer_plan = self.pin.plan(self.dht) if control.plan_version > (plan.version if plan else 0) else None
        self._take(control, newer_plan)
        if self._channel and control.probe_address and control.probe_address != self._channel:
            self._connect_channel(control.probe_address)


def _blamed(error: Exception, own_name: str) -> str:
    """Whom a failure names (`PeerRecord.blamed`): the silent or misbehaving neighbour, else this peer itself."""
    named = error.peer if isinstance(error, PeerTimeout) else error.sender if isinstance(error, BadMessage) else ""
    return named or own_name
