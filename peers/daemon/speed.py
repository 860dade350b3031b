"""The compute speed a peer announces once it knows the swarm's model: its start-up matmul speed times
the model's efficiency on this device, measured once and kept in the cache directory.

The efficiency (a transformer block's speed over a matmul burst's, `peers.profiling.model_efficiency`)
belongs to the hardware, the torch build, the thread count and the model's shapes, not to the moment:
measuring it once keeps the peers of one machine, or one peer across restarts, on the same figure, so
the matmul burst taken at start-up, before the peer's own DHT node and data plane compete for its
CPU (steady to a few percent, and scaled by a CPU quota as training is), alone sets how they compare.
Timed afresh at each warm-up, the block's speed swung by 20-35% between two equal peers of the
network harness (one timed while the other trained), enough to tip the scheduler's layer split.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from models import get_config
from peers.profiling import announced, device_name, model_efficiency
from peers.protocol import TrainingSpec

__all__ = ["measure_speed", "efficiency_key"]

log = logging.getLogger(__name__)


def measure_speed(training: TrainingSpec, device: str, matmul_tflops: float, cache_dir: Path,
                  on_event: Callable[[str], None], name: str) -> float:
    """The TFLOPS this peer announces for `training`'s model: `matmul_tflops` (its start-up
    `measure_device`) times the efficiency of one of the model's blocks at the micro-batch of a
    two-replica grid (cached under `cache_dir`)."""
    config = get_config(training.model)
    sequences = max(1, training.batch // (2 * training.micro_batches))
    key = efficiency_key(device, training.model, sequences, training.dtype)
    path = cache_dir / "speed" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    efficiency = _kept(path, key, lambda: model_efficiency(config, sequences, device, training.dtype))
    tflops = announced(matmul_tflops * efficiency)
    on_event(f"{name}: {tflops:.4f} TFLOPS on {training.model}'s blocks (efficiency {efficiency:.2f} of a matmul "
             f"burst, micro-batches of {sequences})")
    return tflops


def efficiency_key(device: str, model: str, sequences: int, dtype: str) -> str:
    """What a model's efficiency depends on: the hardware, the torch build and threads, the shapes."""
    return (f"{device_name(device)}|torch {torch.__version__}|threads {torch.get_num_threads()}|{model}|"
            f"{sequences} sequences|{dtype}")


def _kept(path: Path, key: str, measure: Callable[[], float]) -> float:
    """The efficiency cached at `path` under `key`, else `measure()`d and cached: under a lock, so the peers
    of one machine measure it once, in turn (measured side by side they would disturb each other)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")
    except OSError as error:  # an unwritable cache costs a measurement at every start, nothing more
        log.warning("cannot keep the model efficiency under %s: %s", path.parent, error)
        return measure()
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        efficiency = _cached(path, key)
        if efficiency is None:
            efficiency = measure()
            _store(path, key, efficiency)
        return efficiency


def _cached(path: Path, key: str) -> float | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = entry.get("efficiency") if isinstance(entry, dict) and entry.get("key") == key else None
    if not isinstance(value, float) or not 0 < value < 100:
        log.info("no usable model efficiency in %s: measuring it", path)
        return None
    return value


def _store(path: Path, key: str, efficiency: float) -> None:
    """Write the entry atomically (a peer killed mid-write leaves no torn file)."""
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
            json.dump({"key": key, "efficiency": efficiency}, tmp)
        os.replace(tmp.name, path)
    except OSError as error:
        log.warning("could not keep the model efficiency in %s: %s", path, error)
