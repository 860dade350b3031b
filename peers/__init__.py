"""Everything a volunteer runs: protocol, transports, the stage executor, all-reduce, `swarm-peer`.

`peers` never imports `swarm`. The engine API the live peer and `swarm-sim local` share:

    worker = peers.StageExecutor(stage_module, stage_index=s, num_stages=S, transport=transport,
                               prev=..., next=..., group=[...], codecs=peers.Codecs("q3", "q6", "q4"),
                               schedule="1f1b", micro_batches=M)
    result = worker.run_step(step, batch_or_none)     # -> peers.StepResult
    worker.run_step(step, batch, apply=False)         # live swarm: prepare, then
    worker.apply_update() or worker.discard_update()  # settle on commit / abort

Every name loads on first use: the engine pulls in torch, the data plane zmq, the daemon
hivemind (whose import installs a log handler), and `peers.protocol` must stay importable without
any of them (the scheduler validates its files through it).
"""
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the lazy names, for type checkers
    from .allreduce import GradientAverager
    from .daemon import PeerDaemon, PeerOptions, UnreachableError
    from .dataplane.probe import check_reachable, measure_bandwidth, probe, unreachable_hint
    from .dataplane.transport import BadMessage, InProcessHub, Mailbox, Message, PeerTimeout, Transport, TransportClosed
    from .dataplane.zmq_transport import ZmqTransport
    from .dht import SwarmDHT
    from .pipeline import ChannelStats, OptimizerSettings, StageExecutor, StepResult
    from .profiling import DeviceProfile, check_device, measure_device
    from .protocol import Codecs, ControlRecord, PeerRecord, PlanRecord, RecordError
    from .state_transfer import StateTransferError, fetch_state, fetch_state_any

_LAZY = {
    **dict.fromkeys(("Message", "Transport", "Mailbox", "PeerTimeout", "TransportClosed", "InProcessHub",
                     "BadMessage"), "dataplane.transport"),
    "StageExecutor": "pipeline", "StepResult": "pipeline", "OptimizerSettings": "pipeline", "ChannelStats": "pipeline",
    "GradientAverager": "allreduce",
    "ZmqTransport": "dataplane.zmq_transport",
    "fetch_state": "state_transfer", "fetch_state_any": "state_transfer", "StateTransferError": "state_transfer",
    **dict.fromkeys(("probe", "measure_bandwidth", "check_reachable", "unreachable_hint"), "dataplane.probe"),
    "Codecs": "protocol", "PeerRecord": "protocol", "PlanRecord": "protocol", "ControlRecord": "protocol",
    "RecordError": "protocol",
    "SwarmDHT": "dht",
    "PeerDaemon": "daemon", "PeerOptions": "daemon", "UnreachableError": "daemon",
    "DeviceProfile": "profiling", "measure_device": "profiling", "check_device": "profiling",
}

__all__ = [
    "Message", "Transport", "Mailbox", "PeerTimeout", "TransportClosed", "BadMessage", "InProcessHub",
    "StageExecutor", "StepResult", "OptimizerSettings", "Codecs", "ChannelStats", "GradientAverager",
    "ZmqTransport", "fetch_state", "fetch_state_any", "StateTransferError",
    "probe", "measure_bandwidth", "check_reachable", "unreachable_hint",
    "PeerRecord", "PlanRecord", "ControlRecord", "RecordError", "SwarmDHT",
    "PeerDaemon", "PeerOptions", "UnreachableError", "DeviceProfile", "measure_device", "check_device",
]


def __getattr__(name: str) -> Any:
    """Import a name's module on first access (see the module docstring)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'peers' has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
