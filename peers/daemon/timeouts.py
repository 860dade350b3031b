"""One hierarchy of timeouts, derived from measured link speeds and device speed.

Every wait in the live swarm is one of these, computed in one place by the coordinator from the
peers' measured links and TFLOPS and published in the plan (`plan.training.timeouts`), so all peers
obey the same numbers and no knob is tuned on its own.

    transfer_s  = latency + bytes / bandwidth      the largest message on the slowest planned link
    step_s      = compute + 2 * micro_batches * stages * transfer_s
                                                   the expected length of one training step
    message_s   = max(10 s, 3 * step_s)            one data-plane wait (recv of an activation,
                                                   gradient or all-reduce chunk): a neighbour that
                                                   sent nothing for three whole steps is gone
    heartbeat_s = 2 s (DHT writes take ~10 ms)     how often a peer re-announces itself
    peer_ttl_s  = 5 heartbeats                     a silent peer's record expires: this is how a
                                                   SIGKILLed peer is noticed; five beats ride out
                                                   a busy CPU (a first-call kernel compile can hold
                                                   the interpreter for seconds)
    commit_s    = message_s * (2 * stages + 4)     the coordinator's patience for a step: longer
                                                   than any chain of message waits inside it; a
                                                   peer that heartbeats but never prepares is
                                                   evicted after it
    state_s     = message_s + 2 * (latency +       one donor's whole transfer of the largest stage's
                  state bytes / bandwidth)         state (weights + optimizer) on the slowest link;
                                                   a donor that sends nothing for message_s is dead
                                                   sooner, and the next one continues its chunks

A member that loads its state at a plan's start (from a donor, the checkpoint or the old stages'
holders) may take `loading_s` = state_s + 3 * message_s (a whole transfer, and a stall of up to
three donors it moves past) before its first step can start: its neighbours' first waits and the
coordinator's first-step patience add it (`first_step_allowance_s`), so a slow link's transfer is
not taken for a dead neighbour.

Inside a step the waits nest too (`WAIT_NESTING`, multiples of message_s): a forward activation
waits 1, a backward gradient 2 (it needs the downstream's forward first), an all-reduce share 3 and
a gathered chunk 4. So when a link breaks, the first peer to give up is the one right behind it:
its report names the silent sender (`PeerTimeout.peer`), and the coordinator aborts the step before
the peers whose waits are only a consequence time out and name someone innocent. A runner's first
step waits `FIRST_STEP_PATIENCE` times longer: on a slow peer, the first calls into torch (kernel
selection, allocator warm-up) can take longer than a whole message_s, and that is no fault.

Each level is longer than the one it contains, so the cause of a failure is always noticed by the
level that owns it: a dead peer by its expired record (peer_ttl_s), a hung link by the waiting
peer (message_s), a hung peer by the coordinator (commit_s). A graceful leave (SIGTERM) writes a
`leaving` record first, so nobody waits for any of them.
"""
from __future__ import annotations

from collections.abc import Mapping

from peers.dataplane.wire import ACT_KIND, GATHER_KIND, GRAD_KIND, REDUCE_KIND
from peers.protocol import SourceKind, StateSource, Timeouts

__all__ = ["derive_timeouts", "loading_s", "first_step_allowance_s", "HEARTBEAT_S", "PEER_TTL_S", "WAIT_NESTING",
           "FIRST_STEP_PATIENCE"]

HEARTBEAT_S = 2.0
PEER_TTL_S = 5 * HEARTBEAT_S
MIN_MESSAGE_S = 10.0
WAIT_NESTING = {ACT_KIND: 1, GRAD_KIND: 2, REDUCE_KIND: 3, GATHER_KIND: 4}
FIRST_STEP_PATIENCE = 3


def derive_timeouts(*, message_bytes: float, bandwidth_gbps: float, latency_ms: float,
                    step_flops: float, tflops: float, stages: int, micro_batches: int,
                    state_bytes: float = 0.0, state_link: tuple[float, float] | None = None) -> Timeouts:
    """The hierarchy for a plan whose slowest link and slowest device are the ones given.

    message_bytes: the largest single message (an activation micro-batch or an all-reduce chunk)
    step_flops: one stage's forward + backward work for a whole step; tflops: the slowest device.
    state_bytes: the largest stage's state as a donor serves it. state_link: (Gbit/s, ms) of the
    slowest link a state transfer of the plan crosses, when slower than the planned ones (a donor
    need not be a member: a standby peer, or one moved out of the grid, serves what it held).
    """
    if bandwidth_gbps <= 0 or tflops <= 0:
        raise ValueError("bandwidth and TFLOPS must be positive to derive timeouts")
    transfer_s = latency_ms / 1e3 + message_bytes * 8 / (bandwidth_gbps * 1e9)
    compute_s = step_flops / (tflops * 1e12)
    step_s = compute_s + 2 * micro_batches * stages * transfer_s
    message_s = max(MIN_MESSAGE_S, 3 * step_s)
    commit_s = message_s * (2 * stages + 4)  # a plan's first step gets FIRST_STEP_PATIENCE times this too
    state_gbps, state_ms = bandwidth_gbps, latency_ms
    if state_link is not None:
        state_gbps, state_ms = min(state_gbps, state_link[0]), max(state_ms, state_link[1])
    if state_gbps <= 0:
        raise ValueError("a state transfer's link bandwidth must be positive to derive timeouts")
    state_s = message_s + 2 * (state_ms / 1e3 + state_bytes * 8 / (state_gbps * 1e9))
    return Timeouts(transfer_s=transfer_s, step_s=step_s, message_s=message_s, heartbeat_s=HEARTBEAT_S,
                    peer_ttl_s=PEER_TTL_S, commit_s=commit_s, state_s=state_s)


def loading_s(timeouts: Timeouts) -> float:
    """The longest a member may spend loading its stage's state before a plan's first step (see above)."""
    return timeouts.state_s + 3 * timeouts.message_s


def first_step_allowance_s(timeouts: Timeouts, sources: Mapping[str, StateSource]) -> float:
    """What a plan's first waits add for its members' state loads: `loading_s`, or 0 when every member
    keeps its state or starts from the seed."""
    loads = any(source.kind not in (SourceKind.KEEP, SourceKind.INIT) for source in sources.values())
    return loading_s(timeouts) if loads else 0.0
