"""The run's corpus reaches every peer: the coordinator serves it, peers fetch it once, verified.

Volunteers on other machines have no copy of the coordinator's `--data` file. The coordinator
announces the corpus by content (`TrainingSpec.data_sha256`, `data_bytes`) and serves it from its
data port in `CORPUS_SLOT`, next to the checkpoint's stages, over the same chunked, sha256-checked
transfer; a peer that lacks it fetches it before taking up its first cell and keeps it under its
cache directory by hash, so a restart or the next run with the same corpus downloads nothing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from models import SequenceDataset, default_corpus_path, get_config, read_corpus
from peers.protocol import PlanRecord
from peers.security import CurveKeys
from peers.state_transfer import StateTransferError, fetch_state

from .records import COORDINATOR_NAME

__all__ = ["CORPUS_SLOT", "CorpusCache", "Datasets", "default_cache_dir", "corpus_sha256", "fetch_corpus"]

log = logging.getLogger(__name__)

# The slot of the coordinator's state server the corpus is served in: past any stage index.
CORPUS_SLOT = 1 << 30


def corpus_sha256(corpus: bytes) -> str:
    return hashlib.sha256(corpus).hexdigest()


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/swarm, else ~/.cache/swarm."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swarm"


class CorpusCache:
    """Corpora by sha256 under `directory/corpus/`; `get` fetches what is missing (and checks it)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory) / "corpus"

    def get(self, sha256: str, nbytes: int, fetch: Callable[[], bytes]) -> tuple[bytes, bool]:
        """(the corpus with that hash and size, whether it was fetched now); ValueError if what
        `fetch` returns is another corpus (a lying or confused coordinator)."""
        path = self.directory / f"{sha256}.bin"
        try:
            cached = path.read_bytes()
        except OSError:
            cached = None
        if cached is not None and len(cached) == nbytes and corpus_sha256(cached) == sha256:
            return cached, False
        if cached is not None:
            log.warning("cached corpus %s is damaged; fetching it again", path)
        corpus = fetch()
        if len(corpus) != nbytes or corpus_sha256(corpus) != sha256:
            raise ValueError(f"the corpus served has {len(corpus)} bytes and sha256 {corpus_sha256(corpus)[:16]}..., "
                             f"but the plan announces {nbytes} bytes and {sha256[:16]}...: refusing it")
        self._store(path, corpus)
        return corpus, True

    def _store(self, path: Path, corpus: bytes) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, delete=False) as tmp:
                tmp.write(corpus)
            os.replace(tmp.name, path)
        except OSError as error:  # a read-only cache costs a download next time, not this run
            log.warning("cannot cache the corpus in %s: %s", self.directory, error)


def fetch_corpus(plan: PlanRecord, cache: CorpusCache, keys: CurveKeys | None) -> tuple[bytes, bool]:
    """The corpus `plan` announces, from `cache` or from the coordinator's data port (then cached);
    whether it was fetched now. RuntimeError saying why when it cannot be had."""
    spec = plan.training
    assert spec.timeouts is not None and spec.data_sha256
    server_key = plan.keys.get(COORDINATOR_NAME)
    timeout = max(spec.timeouts.transfer_s, spec.data_bytes / 1e6)  # at least 8 Mbit/s

    def fetch() -> bytes:
        return fetch_state(plan.checkpoint_address, CORPUS_SLOT, timeout, max_bytes=spec.data_bytes,
                           keys=keys if server_key else None, server_key=server_key)

    try:
        return cache.get(spec.data_sha256, spec.data_bytes, fetch)
    except (StateTransferError, ValueError) as error:
        raise RuntimeError(f"cannot get the run's corpus from the coordinator: {error}") from None


class Datasets:
    """A peer's datasets by (model, corpus), built once: the coordinator's corpus (cached by hash,
    fetched once) when the plan announces one, else `data` or the bundled corpus read from disk.
    `keys`: the peer's curve keys in a swarm with a swarm key."""

    def __init__(self, cache_dir: Path, name: str, keys: CurveKeys | None, on_event: Callable[[str], None]) -> None:
        self.cache = CorpusCache(cache_dir)
        self.name = name
        self.keys = keys
        self.on_event = on_event
        self._built: dict[tuple[str, str | None], SequenceDataset] = {}

    def of(self, plan: PlanRecord) -> SequenceDataset:
        spec = plan.training
        key = (spec.model, spec.data_sha256 or spec.data)
        if key not in self._built:
            self._built[key] = SequenceDataset(self._corpus(plan), get_config(spec.model).context)
        return self._built[key]

    def _corpus(self, plan: PlanRecord) -> bytes:
        spec = plan.training
        if not spec.data_sha256:
            return read_corpus(spec.data or default_corpus_path())
        corpus, fetched = fetch_corpus(plan, self.cache, self.keys)
        if fetched:
            self.on_event(f"{self.name}: fetched the run's corpus ({spec.data_bytes} bytes, sha256 "
                          f"{spec.data_sha256[:12]}...) from the coordinator")
        return corpus
