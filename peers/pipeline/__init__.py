"""The pipeline engine: stage executor, GPipe / 1F1B schedules, compressed channels.

Transport-agnostic: a `StageWorker` reaches its neighbours only through `peers.transport`.
"""
from .channels import CHANNELS, ActivationChannel, ChannelCodecs, ChannelStats, check_codec
from .schedule import SCHEDULES, get_schedule, gpipe, one_f_one_b
from .worker import ACT_KIND, GRAD_KIND, OptimizerSettings, StageWorker, StepResult

__all__ = [
    "StageWorker", "StepResult", "OptimizerSettings", "ACT_KIND", "GRAD_KIND",
    "ChannelCodecs", "ChannelStats", "ActivationChannel", "CHANNELS", "check_codec",
    "SCHEDULES", "get_schedule", "gpipe", "one_f_one_b",
]
