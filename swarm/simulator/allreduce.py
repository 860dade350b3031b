"""One stage's bucketed all-reduce, message by message (each replica's messages vectorised).

The engine (`peers.allreduce`) cuts a stage's gradient into K buckets and sends each bucket's
reduce-scatter shares while the last backward pass is still producing the earlier ones. Here a
replica's uplink sends bucket k once it is ready, whenever the pipeline leaves the link free: the
pipeline's last gradient down has priority (the uplink pauses the shares while it is on the wire).
An owner that has every share of its chunk decodes them, encodes the aggregate and broadcasts it
(all-gather); each replica then decodes the R gathered chunks. The `full` cost model prices the
same steps in closed form (`swarm.scheduler.timeline`).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from swarm.scheduler.network import Network

__all__ = ["ring", "share_sends", "allreduce_finish"]

Array = npt.NDArray[np.float64]


def ring(replicas: int) -> npt.NDArray[np.int64]:
    """(R, R-1): the replicas each replica sends to, in order (the next ones around the ring)."""
    return (np.arange(replicas)[:, None] + np.arange(1, replicas)[None, :]) % replicas


def share_sends(busy: Array, buckets: int, start: float, end: float, free: float,
                paused: tuple[float, float]) -> Array:
    """When one replica's last bucket's shares have left, one per ring target (R-1,).

    busy: (R-1,) seconds the uplink needs for a whole chunk to each target; the last backward pass
    runs from `start` to `end` and bucket k of `buckets` is ready at start + k (end - start) / K; the
    uplink is free from `free` on except during `paused` (the pipeline's last gradient). The first
    K-1 buckets count as one message each (only their total matters); the last one is a message per target.
    """
    k = np.arange(1, buckets + 1)
    ready = np.concatenate([start + k[:-1] * (end - start) / buckets, np.full(len(busy), end)])
    work = np.concatenate([np.full(buckets - 1, busy.sum() / buckets), busy / buckets])
    sent = np.cumsum(work)
    left = sent + np.maximum(free, np.maximum.accumulate(ready - (sent - work)))  # a FIFO link with releases
    before = np.clip(paused[0] - (left - work), 0.0, work).sum()    # what left before the pause
    resumed = np.where(left <= paused[0], left, paused[1] + sent - before)
    return resumed[buckets - 1:]


def allreduce_finish(net: Network, group: npt.NDArray[np.int64], chunk: float, sent: Array, ready: Array,
                     codec: Array) -> float:
    """When the all-gather after a reduce-scatter ends: every replica has decoded every chunk.

    sent: (R, R-1) when replica i's last share for its j-th ring target left (`share_sends`);
    ready: (R,) when each replica's own backward pass ended; codec: (R,) seconds each replica needs
    to decode (or encode) R chunks of `chunk` bytes' values.
    """
    targets = ring(len(group))
    rows = np.arange(len(group))[:, None]
    busy = chunk / net.bandwidth(group[rows], group[targets])
    delay = net.latency(group[rows], group[targets])
    reduced = ready.copy()
    np.maximum.at(reduced, targets.ravel(), (sent + delay).ravel())
    start = np.maximum(reduced + codec, sent[:, -1])  # decoded its shares, encoded the aggregate, uplink free
    gathered = np.full(len(group), -np.inf)
    np.maximum.at(gathered, targets.ravel(), (start[:, None] + np.cumsum(busy, axis=1) + delay).ravel())
    return float((gathered + codec).max())
