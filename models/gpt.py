"""The GPT decoder cut into pipeline stages, each an independent module a peer can own.

A `Stage` holds a contiguous run of transformer blocks; stage 0 also owns the embeddings and the
last stage the final norm, head and loss. Parameter names are global (`blocks.7.attn.qkv.weight`
lives under that name in whichever stage holds layer 7), so stage state dicts stitch into one
model checkpoint, and initialisation is seeded per parameter name: any split of a model starts
from bit-identical weights, which is what lets an S x R grid be checked against one process.
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPTConfig

__all__ = ["Stage", "Block", "init_parameters"]


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention then a GELU MLP, both residual."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.heads = config.heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        shape = (batch, length, self.heads, d // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(attended.transpose(1, 2).reshape(batch, length, d))
        out: torch.Tensor = x + self.mlp_proj(F.gelu(self.fc(self.ln2(x))))
        return out


class Stage(nn.Module):
    """Layers `layers` of the model; `first` adds the embeddings, `last` the norm, head and loss.

    forward(x): stage 0 takes token ids [batch, length]; other stages take the previous stage's
    hidden states [batch, length, d_model]. The last stage returns logits, others hidden states.
    """

    def __init__(self, config: GPTConfig, layers: range, *, first: bool, last: bool) -> None:
        super().__init__()
        self.config = config
        self.layers = layers
        self.first = first
        self.last = last
        if first:
            self.tok = nn.Embedding(config.vocab, config.d_model)
            self.pos = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleDict({str(i): Block(config) for i in layers})
        if last:
            self.norm = nn.LayerNorm(config.d_model)
            self.head = nn.Linear(config.d_model, config.vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            if x.shape[-1] > self.config.context:
                raise ValueError(f"sequence length {x.shape[-1]} exceeds the model context {self.config.context}")
            positions = torch.arange(x.shape[-1], device=x.device)
            x = self.tok(x) + self.pos(positions)
        for block in self.blocks.values():
            x = block(x)
        if self.last:
            x = self.head(self.norm(x))
        return x

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross entropy (nats per token); only the last stage has logits."""
        if not self.last:
            raise RuntimeError("only the last stage computes the loss")
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def init_parameters(stage: Stage, seed: int) -> None:
    """GPT-2 initialisation, seeded by (seed, global parameter name) so every split agrees.

    Weights ~ N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers), biases zero,
    norm gains one.
    """
    residual_std = 0.02 / math.sqrt(2 * stage.config.layers)
    with torch.no_grad():
        for name, parameter in stage.named_parameters():
            if parameter.is_meta:
                continue
            if name.endswith(".bias"):
                parameter.zero_()
            elif ".ln" in name or name.startswith("norm."):
                parameter.fill_(1.0)
            else:
                std = residual_std if name.endswith("_proj.weight") else 0.02
                generator = torch.Generator(device="cpu").manual_seed(_name_seed(seed, name))
                values = torch.empty(parameter.shape, dtype=parameter.dtype).normal_(0.0, std, generator=generator)
                parameter.copy_(values)


def _name_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
