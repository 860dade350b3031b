"""A peer's way in: find the coordinator, be admitted, prove that others can dial its data port.

Each wait says what to check when it takes long, so a volunteer with a wrong address, token or
firewall learns it from the log instead of silently never training.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import compression
from peers.dataplane.probe import check_reachable, unreachable_hint
from peers.dataplane.transport import PeerTimeout
from peers.dht import SwarmDHT
from peers.profiling import measure_codec
from peers.protocol import CHANNELS, Codecs, ControlRecord, PlanRecord, TrainingSpec

from .credentials import Credentials
from .records import CoordinatorPin

__all__ = ["UnreachableError", "join_dht", "await_coordinator", "await_admission", "check_data_port", "swarm_job",
           "warm_codecs"]

_SAY_AFTER_S = 15.0


class UnreachableError(RuntimeError):
    """Other peers cannot open a connection to this peer's data port; the message says what to fix."""


def join_dht(initial_peers: Sequence[str], host: str, cache_dir: Path, name: str) -> SwarmDHT:
    """This peer's DHT node, its signing key kept (a restart is the same peer); ValueError naming the flag."""
    try:
        return SwarmDHT(initial_peers, host=host, identity_dir=cache_dir / "identity" / name)
    except Exception as error:  # hivemind raises its own types (P2PDaemonError, TimeoutError) for bad addresses
        raise ValueError(f"cannot join the DHT via --initial-peers {' '.join(initial_peers)} (listening on --host "
                         f"{host}): {error}. Pass the full multiaddr the coordinator printed "
                         "(/ip4/HOST/tcp/PORT/p2p/ID, also in its DIR/coordinator.json) and check that its port is "
                         "reachable from here") from None


def await_coordinator(pin: CoordinatorPin, dht: SwarmDHT, name: str, on_event: Callable[[str], None],
                      stop: threading.Event) -> ControlRecord | None:
    """The coordinator's first control record (None: stopped first)."""
    started, warned = time.monotonic(), False
    while not stop.is_set():
        control = pin.control(dht)
        if control is not None and control.probe_address:
            return control
        if not warned and time.monotonic() - started > _SAY_AFTER_S:
            on_event(f"{name}: no coordinator found yet; check --initial-peers (the address the coordinator printed)")
            warned = True
        stop.wait(0.2)
    return None


def await_admission(pin: CoordinatorPin, dht: SwarmDHT, credentials: Credentials, control: ControlRecord, name: str,
                    on_event: Callable[[str], None], stop: threading.Event) -> bool:
    """Check that this peer and the swarm agree on admission, then wait to be admitted (False: stopped)."""
    credentials.check(control)
    started, warned = time.monotonic(), False
    while not stop.is_set():
        credentials.refresh(control)
        if credentials.admitted(control):
            if credentials.keys is not None:
                on_event(f"{name}: admitted to the swarm")
            return True
        if not warned and time.monotonic() - started > _SAY_AFTER_S:
            on_event(f"{name}: not admitted yet; check --join-token (or that the coordinator lists this key in "
                     f"--allow-keys: {credentials.public_key})")
            warned = True
        stop.wait(0.2)
        control = pin.control(dht) or control
    return False


def check_data_port(control: ControlRecord, address: str, credentials: Credentials, name: str,
                    on_event: Callable[[str], None]) -> None:
    """Ask the coordinator to dial `address` back; UnreachableError saying what to open if it cannot."""
    try:
        rtt = check_reachable(control.probe_address, address, keys=credentials.keys,
                              server_key=credentials.coordinator_key or None, own_key=credentials.public_key)
    except PeerTimeout:
        on_event(f"{name}: the coordinator did not answer the reachability check; going on")
        return
    if rtt is None:
        raise UnreachableError(unreachable_hint(address, control.probe_address))


def swarm_job(plan: PlanRecord | None, control: ControlRecord) -> tuple[TrainingSpec, Codecs]:
    """What the swarm trains and its codecs: the current plan's, before the first plan the control record's."""
    return (plan.training, plan.codecs) if plan is not None else (control.training, control.codecs)


def warm_codecs(codecs: Codecs, device: str, on_event: Callable[[str], None], name: str) -> float:
    """Compile the swarm's codec kernels before this peer says ready, so the compilation is on no
    step's clock (`compression.warm_up`); then time the forward codec: the Gvalues/s this peer
    announces as its `codec_gvalues`."""
    started = time.monotonic()
    compression.warm_up([codecs.of(channel) for channel in CHANNELS], device)
    seconds = time.monotonic() - started
    if seconds >= 0.5:
        on_event(f"{name}: codec kernels ready in {seconds:.1f} s")
    return measure_codec(codecs.forward, device)
