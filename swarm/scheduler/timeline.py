"""The `full` model's clock: when the pipeline's passes end and when each stage's all-reduce does.

Closed forms only (no events), vectorised over the R pipelines, because the search prices
thousands of grids a second; `swarm.simulator` replays the same semantics message by message and
the tests hold the two together. The formulas are written out in `swarm.scheduler.cost`.

A pipeline is a chain of single servers (compute, then the link to the next stage, ...) that M
identical micro-batches cross in order; the one exception is the last micro-batch of the backward
pass, which also encodes the all-reduce's shares (`extra`). The completion times then follow from
the longest path through the (micro-batch x server) grid, which `last_jobs` evaluates in closed
form.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Timeline", "last_jobs", "pipeline_timeline", "compute_makespan", "overlapped_finish"]

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Timeline:
    """(S, R) times of one iteration's backward pass on device (s, r) (see `pipeline_timeline`)."""

    last_start: Array   # its last backward pass starts
    last_end: Array     # ... and ends (its all-reduce shares encoded as it went)
    link_free: Array    # its uplink has sent every earlier micro-batch's gradient down
    done: Array         # its uplink has sent the last gradient down too (stage 0: = last_end)


def last_jobs(service: Array, delay: Array, extra: Array, jobs: int) -> tuple[Array, Array]:
    """When the last and the second-to-last of `jobs` identical jobs leave each server of a chain.

    service, delay, extra: (servers, R). `delay[k]` is a pure delay before server k (latency: it
    holds no server), `extra[k]` more service the last job alone needs at server k. Every job is
    released at time 0. The last job's longest path enters its own row at some server i0 after
    the second-to-last job left it: C(M, k) = sum_{i<=k} (p_i + d_i) + sum_{i0<=i<=k} e_i
    + max_{i0<=k} [p_i0 + (M-2) max_{i<=i0} p_i]; with e = 0 that is the flow-shop identity
    sum + (M-1) x slowest. The second-to-last job (M >= 2): sum + (M-2) x slowest.
    """
    reach = np.cumsum(service + delay, axis=0)
    slowest = np.maximum.accumulate(service, axis=0)
    spent = np.cumsum(extra, axis=0)
    entry = service + (jobs - 2) * slowest - (spent - extra)
    last: Array = reach + spent + np.maximum.accumulate(entry, axis=0)
    before: Array = reach + (jobs - 2) * slowest
    return last, before


def pipeline_timeline(forward: Array, backward: Array, up: Array, down: Array, latency: Array,
                      extra: Array, jobs: int) -> Timeline:
    """The GPipe iteration of S x R devices: all forward passes, then all backward passes.

    forward, backward: (S, R) seconds of one micro-batch's pass (codecs included); up, down, latency:
    (S-1, R) seconds hop s <-> s+1 is busy with one activation frame, one gradient frame, and its
    latency; extra: (S, R) more compute of the last backward pass (the all-reduce's encodes).
    """
    slowest = forward.max(axis=0) if not len(up) else np.maximum(forward.max(axis=0), up.max(axis=0))
    t_fwd = forward.sum(axis=0) + up.sum(axis=0) + latency.sum(axis=0) + (jobs - 1) * slowest  # no extras: the identity
    # the backward chain runs from the last stage down: its server 2i is stage S-1-i, 2i+1 that stage's uplink
    service = _interleave(backward[::-1], down[::-1])
    delay, more = np.zeros_like(service), np.zeros_like(service)
    delay[2::2], more[0::2] = latency[::-1], extra[::-1]   # a hop's latency delays the next stage's compute
    last, before = last_jobs(service, delay, more, jobs)
    last_end = t_fwd + last[0::2][::-1]
    done, link_free = last_end.copy(), np.empty_like(last_end)
    done[1:] = t_fwd + last[1::2][::-1]    # stage s >= 1: its last gradient is down at stage s-1
    link_free[0] = t_fwd
    link_free[1:] = (t_fwd + before[1::2][::-1]) if jobs > 1 else t_fwd   # one micro-batch: nothing earlier
    return Timeline(last_end - backward - extra, last_end, link_free, done)


def compute_makespan(forward: Array, backward: Array, jobs: int) -> Array:
    """(R,) what each pipeline's iteration would take on free links and without an all-reduce: its compute."""
    slowest = forward.max(axis=0) + backward.max(axis=0)
    total: Array = forward.sum(axis=0) + backward.sum(axis=0) + (jobs - 1) * slowest
    return total


def overlapped_finish(timeline: Timeline, send: Array, latency: Array, buckets: Array, codec: Array) -> Array:
    """(S,) when each stage's all-reduce ends, its reduce-scatter overlapping the last backward pass.

    send, latency: (S, R) seconds device (s, r)'s uplink is busy with one phase's R-1 frames, and
    the phase's longest latency; buckets: (S,); codec: (S, R) seconds to decode or encode R chunks.
    Bucket k of K is ready at last_start + k (last_end - last_start) / K; the uplink sends buckets
    whenever the pipeline leaves it free, so before the last gradient goes down it carries at most
    the K-1 buckets ready by then, and after it the rest. An owner broadcasts once the others' shares
    are in, it has decoded them and encoded the aggregate; a replica ends once it has decoded every chunk.
    """
    k = buckets[:, None]
    first_bucket = timeline.last_start + (timeline.last_end - timeline.last_start) / k
    window = np.maximum(timeline.last_end, timeline.link_free) - np.maximum(timeline.link_free, first_bucket)
    early = np.minimum((k - 1) / k * send, np.maximum(window, 0.0))
    shares_sent = timeline.done + send - early
    reduced = np.maximum(_others(shares_sent + latency), timeline.last_end)
    broadcast = np.maximum(reduced + codec, shares_sent)
    finish: Array = (_others(broadcast + send + latency) + codec).max(axis=1)
    return finish


def _others(values: Array) -> Array:
    """(S, R): for each device, the largest value among the other replicas of its stage (R >= 2)."""
    top2 = np.partition(values, -2, axis=1)[:, -2:]   # the second largest, then the largest
    others: Array = np.where(values == top2[:, 1:], top2[:, :1], top2[:, 1:])
    return others


def _interleave(compute: Array, link: Array) -> Array:
    """Rows compute 0, link 0, compute 1, link 1, ..., compute S-1: (2S-1, R)."""
    rows = np.empty((len(compute) + len(link), compute.shape[1]))
    rows[0::2], rows[1::2] = compute, link
    return rows
