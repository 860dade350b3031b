"""What one stage costs: parameters, FLOPs, bytes on each channel and memory, from the scenario.

The model math is `models.stages` (the counts of the stages the peers build) and the bytes are
`compression.frame_size` (the exact frames the peers send: header, scales and payload), so the
scheduler, the simulator and the runtime price a stage alike:
- a micro-batch crosses a stage boundary as one frame of `boundary_values` values, in the
  "forward" codec going down the pipeline and in the "backward" codec coming back;
- a stage's all-reduce cuts its gradient into R chunks, one per owner replica: each device sends
  R - 1 reduce-scatter frames and R - 1 all-gather frames of ceil(parameters / R) values, in the
  "gradient" codec;
- the last micro-batch's backward pass cuts a stage's gradient into buckets of BUCKET_VALUES
  values (`peers.protocol.training`, the engine's own constant), each sent as soon as backward
  has produced it, so the all-reduce overlaps the end of the pipeline;
- codecs cost per value, not per byte: a pass of stage s decodes the frame it received and encodes
  the one it sends (one boundary value count each), at the device's `codec_gvalues`;
- backward compute is (BACKWARD_FLOPS_FACTOR + 1) x forward: the gradient and one recomputed
  forward pass (GPipe re-materialisation, which the memory model assumes);
- memory per device: 16 bytes per parameter (fp16 weights and gradients, fp32 master copy and two
  Adam moments) + the stashed boundary input of every micro-batch in flight (fp16) + the working
  activations of one layer during recomputation (34 * s * d + 5 * heads * s^2 bytes per sequence,
  Korthikanti et al.).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import numpy.typing as npt

from models import BACKWARD_FLOPS_FACTOR, boundary_values, forward_flops_per_token, stage_parameters
from peers.protocol import BUCKET_VALUES
from swarm.scheduler.scenario import Scenario

__all__ = ["Workload", "BACKWARD_COMPUTE", "BYTES_PER_PARAMETER"]

BACKWARD_COMPUTE = BACKWARD_FLOPS_FACTOR + 1.0
BYTES_PER_PARAMETER = 16
STASH_BYTES_PER_VALUE = 2  # stashed boundary inputs are kept in fp16

Layers = npt.NDArray[np.int64]
PerStage = npt.NDArray[np.float64]


class Workload:
    """Per-stage quantities for one scenario and one S x R shape; the methods take `layers`."""

    def __init__(self, scenario: Scenario, stages: int, replicas: int):
        # compression loads torch: imported here so that importing the scheduler stays light
        from compression import frame_size

        model, batch = scenario.model, scenario.batch
        self.scenario, self.stages, self.replicas = scenario, stages, replicas
        self.config = model.config
        self.codecs = scenario.compression.codecs
        self.frame_size = frame_size
        self.micro_batches = math.ceil(batch.global_sequences / (batch.micro_sequences * replicas))
        self.tokens = batch.micro_sequences * model.seq_len
        self.boundary_values = boundary_values(self.config, batch.micro_sequences)
        stage = np.arange(stages)
        # (S,) values one pass of each stage codes: its input frame (s > 0) and its output frame (s < S-1)
        self.pass_values = ((stage > 0).astype(float) + (stage < stages - 1)) * self.boundary_values
        # (N,) seconds each device spends on one value in one codec pass; 0 where the scenario gives no rate
        self.codec_s = np.array([0.0 if d.codec_gvalues is None else 1 / (d.codec_gvalues * 1e9)
                                 for d in scenario.devices])
        self._cache: dict[tuple[object, ...], PerStage] = {}

    def params(self, layers: Layers) -> PerStage:
        """(S,) parameters held by each stage."""
        return self._memo("params", layers, lambda split: [stage_parameters(self.config, split, s)
                                                           for s in range(len(split))])

    def forward_flops(self, layers: Layers) -> PerStage:
        """(S,) FLOPs of one micro-batch's forward pass through each stage."""
        return self._memo("flops", layers, lambda split: [self.tokens * forward_flops_per_token(self.config, split, s)
                                                          for s in range(len(split))])

    def activation_bytes(self, channel: str) -> int:
        """Bytes of one micro-batch crossing one stage boundary on `channel` ("forward" or "backward")."""
        return self.frame_size(self.codecs[channel], self.boundary_values)

    def gradient_bytes(self, layers: Layers, codec: str, parts: int = 1) -> PerStage:
        """(S,) bytes of one frame of 1/`parts` of each stage's gradient in `codec`."""
        params = self.params(layers)
        return self._memo(("gradient", codec, parts), layers,
                          lambda _: [self.frame_size(codec, -(-int(p) // parts)) for p in params])

    def gradient_chunk_bytes(self, layers: Layers) -> PerStage:
        """(S,) bytes of one all-reduce frame of each stage: 1/R of its gradient, "gradient" codec."""
        return self.gradient_bytes(layers, self.codecs["gradient"], self.replicas)

    def chunk_values(self, layers: Layers) -> PerStage:
        """(S,) values of one all-reduce frame of each stage (what its codecs encode and decode)."""
        return self._memo("chunk", layers, lambda _: [math.ceil(p / self.replicas) for p in self.params(layers)])

    def buckets(self, layers: Layers) -> PerStage:
        """(S,) all-reduce buckets of each stage: its gradient in pieces of BUCKET_VALUES values."""
        return self._memo("buckets", layers, lambda _: [math.ceil(p / BUCKET_VALUES) for p in self.params(layers)])

    def stash_bytes(self) -> int:
        """Bytes of the boundary inputs a device keeps for the backward passes of its micro-batches."""
        return self.micro_batches * self.boundary_values * STASH_BYTES_PER_VALUE

    def memory_bytes(self, layers: Layers) -> PerStage:
        """(S,) bytes a device needs to hold stage s (see the module docstring)."""
        model, batch = self.scenario.model, self.scenario.batch
        working = batch.micro_sequences * (34 * model.seq_len * model.d_model + 5 * model.heads * model.seq_len ** 2)
        return BYTES_PER_PARAMETER * self.params(layers) + self.stash_bytes() + working

    def _memo(self, what: object, layers: Layers, compute: Callable[[list[int]], Sequence[float]]) -> PerStage:
        """`compute(split)` as a read-only array, once per layer split: the search prices a split many times."""
        split = [int(n) for n in layers]
        key = (what, *split)
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = np.array(compute(split), dtype=np.float64)
            value.flags.writeable = False
        return value
