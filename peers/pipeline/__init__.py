"""The pipeline engine: stage executor, GPipe / 1F1B schedules, compressed channels.

Transport-agnostic: a `StageExecutor` reaches its neighbours only through `peers.dataplane.transport`.
"""
from .channels import ActivationChannel, ChannelStats
from .schedule import SCHEDULES, get_schedule, gpipe, one_f_one_b
from .stage_executor import NonFiniteStep, OptimizerSettings, StageExecutor, StepResult

__all__ = [
    "StageExecutor", "StepResult", "OptimizerSettings", "NonFiniteStep",
    "ChannelStats", "ActivationChannel",
    "SCHEDULES", "get_schedule", "gpipe", "one_f_one_b",
]
