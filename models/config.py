"""Model shapes: the GPT presets swarm trains, and their parameter counts computed analytically.

The presets copy published shapes so that cost models and tests can talk about real models
(GPT-2 small and XL, GPT-3 XL) without allocating them. `tiny` is what tests and `swarm-sim local`
train on a laptop. Counting is analytic so the 1.3B-parameter presets never touch memory.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["GPTConfig", "PRESETS", "get_config", "count_parameters", "layer_parameters"]

GPT2_VOCAB = 50257


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a pre-LayerNorm GPT decoder with learned positions and an untied output head."""

    layers: int
    d_model: int
    heads: int
    context: int
    vocab: int = 256
    name: str = "custom"

    def __post_init__(self) -> None:
        for field in ("layers", "d_model", "heads", "context", "vocab"):
            if getattr(self, field) <= 0:
                raise ValueError(f"model {field} must be positive, got {getattr(self, field)}")
        if self.d_model % self.heads:
            raise ValueError(f"model d_model {self.d_model} is not divisible by heads {self.heads}")

    def to_dict(self) -> dict[str, int | str]:
        """The shape as a JSON-ready dict (what reports and checkpoints record)."""
        return asdict(self)


PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(layers=4, d_model=128, heads=4, context=128, vocab=256, name="tiny"),
    "small": GPTConfig(layers=12, d_model=768, heads=12, context=1024, vocab=GPT2_VOCAB, name="small"),
    "gpt2-xl": GPTConfig(layers=48, d_model=1600, heads=25, context=1024, vocab=GPT2_VOCAB, name="gpt2-xl"),
    "gpt3-xl": GPTConfig(layers=24, d_model=2048, heads=16, context=2048, vocab=GPT2_VOCAB, name="gpt3-xl"),
}


def get_config(name: str) -> GPTConfig:
    """The preset called `name`; the error lists the choices (callers name their flag)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}") from None


def layer_parameters(config: GPTConfig) -> int:
    """Parameters of one transformer block: 12 d^2 weights plus 13 d biases and norm gains."""
    d = config.d_model
    return 12 * d * d + 13 * d


def count_parameters(config: GPTConfig, *, tied_head: bool = False) -> int:
    """Total parameters of the model; `tied_head=True` gives the count GPT-2 papers publish."""
    d = config.d_model
    embeddings = config.vocab * d + config.context * d
    final_norm = 2 * d
    head = 0 if tied_head else config.vocab * d
    return embeddings + config.layers * layer_parameters(config) + final_norm + head
