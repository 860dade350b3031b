"""The timeout hierarchy of one plan, sized from the bytes its messages really take.

`peers.daemon.timeouts.derive_timeouts` turns a link, a device and a message size into the
hierarchy; this module finds those three for a placement: its slowest planned link, its slowest
device, and its largest message (a micro-batch's activations or one replica's share of a stage's
gradient), priced by the codecs themselves (`compression.frame_size`) and the model's own cost
math (`models.stages`).
"""
from __future__ import annotations

from collections.abc import Iterable

import compression
from models import BACKWARD_FLOPS_FACTOR, boundary_values, forward_flops_per_token, get_config, stage_parameters
from peers.daemon.timeouts import derive_timeouts
from peers.protocol import Codecs, Link, PeerRecord, Timeouts, TrainingSpec

from .planning import Placement

__all__ = ["plan_timeouts", "STATE_BYTES_PER_PARAMETER"]

STATE_BYTES_PER_PARAMETER = 12  # what a donor serves: fp32 weights and AdamW's two fp32 moments


def plan_timeouts(placement: Placement, records: dict[str, PeerRecord], training: TrainingSpec,
                  codecs: Codecs, transfers: Iterable[tuple[str, str]] = ()) -> Timeouts:
    """The hierarchy for `placement` (unmeasured links count as 1 Gbit/s, 1 ms); transfers: the
    (cell, donor) pairs its state transfers may cross, whose links size `state_s` too."""
    model = get_config(training.model)
    members = [n for row in placement.grid for n in row]
    links = [link for n in members for peer, link in records[n].links.items() if peer in members]
    moves = [link for a, b in transfers if (link := _link_between(records, a, b)) is not None]
    state_link = (min(m.bandwidth_gbps for m in moves), max(m.latency_ms for m in moves)) if moves else None
    bandwidth = min((link.bandwidth_gbps for link in links), default=1.0)
    latency = max((link.latency_ms for link in links), default=1.0)
    replicas, stages = len(placement.grid[0]), len(placement.grid)
    micro = max(1, training.batch // (replicas * training.micro_batches))
    forward = "none" if codecs.forward_delta else codecs.forward  # AQ-SGD's first visits go in full
    activation = compression.frame_size(forward, boundary_values(model, micro))
    parameters = max(stage_parameters(model, placement.layers, s) for s in range(stages))
    gradient_share = compression.frame_size(codecs.gradient, -(-parameters // replicas))
    tokens = training.batch // replicas * model.context
    step_flops = (1 + BACKWARD_FLOPS_FACTOR) * tokens * max(
        forward_flops_per_token(model, placement.layers, s) for s in range(stages))
    return derive_timeouts(message_bytes=max(activation, gradient_share), bandwidth_gbps=bandwidth,
                           latency_ms=latency, step_flops=step_flops,
                           tflops=min(records[n].tflops for n in members), stages=stages,
                           micro_batches=training.micro_batches,
                           state_bytes=STATE_BYTES_PER_PARAMETER * parameters, state_link=state_link)


def _link_between(records: dict[str, PeerRecord], a: str, b: str) -> Link | None:
    """The link between two peers as either end measured it (the slower reading when both did)."""
    readings = [records[x].links[y] for x, y in ((a, b), (b, a)) if x in records and y in records[x].links]
    return min(readings, key=lambda link: link.bandwidth_gbps, default=None)
