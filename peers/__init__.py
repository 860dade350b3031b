"""Everything a volunteer runs: protocol, transports, the stage executor, all-reduce, `swarm-peer`.

`peers` never imports `swarm`. The engine API the live peer and `swarm-sim local` share:

    worker = peers.StageWorker(stage_module, stage_index=s, num_stages=S, transport=transport,
                               prev=..., next=..., group=[...], codecs=peers.ChannelCodecs("q3", "q6", "q4"),
                               schedule="1f1b", micro_batches=M)
    result = worker.run_step(step, batch_or_none, plan_version)   # -> peers.StepResult
"""
from .allreduce import GradientAverager
from .pipeline import ChannelCodecs, ChannelStats, OptimizerSettings, StageWorker, StepResult
from .transport import InProcessHub, Mailbox, Message, PeerTimeout, Transport, TransportClosed

__all__ = [
    "Message", "Transport", "Mailbox", "PeerTimeout", "TransportClosed", "InProcessHub",
    "StageWorker", "StepResult", "OptimizerSettings", "ChannelCodecs", "ChannelStats",
    "GradientAverager",
]
