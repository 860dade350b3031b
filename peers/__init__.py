"""Everything a volunteer runs: protocol, transports, the stage executor, all-reduce, `swarm-peer`.

`peers` never imports `swarm`. The engine API the live peer and `swarm-sim local` share:

    worker = peers.StageExecutor(stage_module, stage_index=s, num_stages=S, transport=transport,
                               prev=..., next=..., group=[...], codecs=peers.Codecs("q3", "q6", "q4"),
                               schedule="1f1b", micro_batches=M)
    result = worker.run_step(step, batch_or_none, plan_version)   # -> peers.StepResult
    worker.run_step(step, batch, plan_version, apply=False)       # live swarm: prepare, then
    worker.apply_update() or worker.discard_update()              # settle on commit / abort

The data plane and the daemon (`ZmqTransport`, `fetch_state`, `probe`, `PlanRecord`, `SwarmDHT`,
`PeerDaemon`, ...) are listed here too but load on first use: they pull in zmq and hivemind, and
importing hivemind installs a log handler, which `import peers` (as `swarm-sim local` does) must
not do.
"""
from importlib import import_module
from typing import Any

from .allreduce import GradientAverager
from .pipeline import ChannelStats, OptimizerSettings, StageExecutor, StepResult
from .protocol import Codecs
from .transport import InProcessHub, Mailbox, Message, PeerTimeout, Transport, TransportClosed

_LAZY = {
    "ZmqTransport": "zmq_transport",
    "fetch_state": "state_transfer", "fetch_state_any": "state_transfer", "StateTransferError": "state_transfer",
    "probe": "probe", "measure_bandwidth": "probe", "check_reachable": "probe", "unreachable_hint": "probe",
    "PeerRecord": "protocol", "PlanRecord": "protocol", "ControlRecord": "protocol", "RecordError": "protocol",
    "SwarmDHT": "dht",
    "PeerDaemon": "daemon", "PeerOptions": "daemon", "UnreachableError": "daemon",
    "DeviceProfile": "profiling", "measure_device": "profiling", "check_device": "profiling",
}

__all__ = [
    "Message", "Transport", "Mailbox", "PeerTimeout", "TransportClosed", "InProcessHub",
    "StageExecutor", "StepResult", "OptimizerSettings", "Codecs", "ChannelStats",
    "GradientAverager", *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Import the data-plane and daemon names on first access (see the module docstring)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'peers' has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
