"""What one stage costs: parameters, FLOPs, bytes on each channel and memory, from the scenario.

The formulas (a GPT-style decoder, DESIGN.md section 3):
- parameters of a stage with L layers: 12 * d^2 * L; the first and the last stage also hold the
  token embedding / output head, vocab * d each (untied; one stage holding both holds 2x).
- forward FLOPs per token and layer: 24 * d^2 (the four projections and the MLP, 2 FLOPs per
  multiply-add) + 4 * seq * d (attention scores and their weighted sum); the last stage adds
  2 * vocab * d per token for the head. Backward = 3 x forward: the gradient costs 2 x forward and
  activations are recomputed once (GPipe re-materialisation, which the memory model assumes).
- bytes on the wire for n values at k bits: ceil(n * k / 8), plus one fp16 scale per block when
  k <= 8 (blocks of 128 for activations, buckets of 512 for gradients); k = 16 or 32 is raw.
- memory per device: 16 bytes per parameter (fp16 weights and gradients, fp32 master copy and two
  Adam moments) + the stashed boundary input of every micro-batch in flight (fp16) + the working
  activations of one layer during recomputation (34 * s * d + 5 * heads * s^2 bytes per sequence,
  Korthikanti et al.).
"""
from __future__ import annotations

import math

import numpy as np

from swarm.scheduler.scenario import Scenario

__all__ = ["Workload", "wire_bytes"]

ACTIVATION_BLOCK = 128
GRADIENT_BUCKET = 512
BYTES_PER_PARAMETER = 16


def wire_bytes(values: float, bits: int, block: int) -> float:
    """Bytes that `values` numbers take on the wire at `bits` bits (scales included)."""
    if bits >= 16:
        return values * bits / 8
    return math.ceil(values * bits / 8) + 2 * math.ceil(values / block)


class Workload:
    """Per-stage quantities for one scenario and one stage count; all methods take `layers`."""

    def __init__(self, scenario: Scenario, stages: int, replicas: int):
        model, batch = scenario.model, scenario.batch
        self.scenario, self.stages, self.replicas = scenario, stages, replicas
        self.micro_batches = math.ceil(batch.global_sequences / (batch.micro_sequences * replicas))
        self.tokens = batch.micro_sequences * model.seq_len
        self.layer_params = 12 * model.d_model ** 2
        self.embedding_params = model.vocab * model.d_model
        self.layer_flops = self.tokens * (24 * model.d_model ** 2 + 4 * model.seq_len * model.d_model)
        self.head_flops = self.tokens * 2 * model.vocab * model.d_model
        self.boundary_values = self.tokens * model.d_model

    def params(self, layers: np.ndarray) -> np.ndarray:
        """(S,) parameters held by each stage."""
        params = np.asarray(layers, dtype=np.float64) * self.layer_params
        params[0] += self.embedding_params
        params[-1] += self.embedding_params
        return params

    def forward_flops(self, layers: np.ndarray) -> np.ndarray:
        """(S,) FLOPs of one micro-batch's forward pass through each stage."""
        flops = np.asarray(layers, dtype=np.float64) * self.layer_flops
        flops[-1] += self.head_flops
        return flops

    def activation_bytes(self, bits: int) -> float:
        """Bytes of one micro-batch crossing one stage boundary at `bits` bits."""
        return wire_bytes(self.boundary_values, bits, ACTIVATION_BLOCK)

    def gradient_bytes(self, layers: np.ndarray, bits: int) -> np.ndarray:
        """(S,) bytes of each stage's full gradient at `bits` bits."""
        return np.array([wire_bytes(p, bits, GRADIENT_BUCKET) for p in self.params(layers)])

    def memory_bytes(self, layers: np.ndarray) -> np.ndarray:
        """(S,) bytes a device needs to hold stage s (see the module docstring)."""
        model, batch = self.scenario.model, self.scenario.batch
        stash = self.micro_batches * self.boundary_values * 2
        working = batch.micro_sequences * (34 * model.seq_len * model.d_model
                                           + 5 * model.heads * model.seq_len ** 2)
        return BYTES_PER_PARAMETER * self.params(layers) + stash + working
