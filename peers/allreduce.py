"""Data-parallel gradient averaging over any `Transport`: reduce-scatter, then all-gather, per bucket.

The R replicas of a stage cut their gradients into buckets of about `BUCKET_VALUES` values (the
tensors in the order their gradients become final: last layers first, as DDP does), and each
bucket into R chunks; replica j owns chunk j of every bucket. Each replica sends its compressed
share of chunk j to owner j (error feedback on the sender), the owner decodes the shares and sums
them in group order (fixed, so arrival order never matters), re-encodes the average (error
feedback on the owner too) and broadcasts it. Every replica, the owner included, writes back the
*decoded* broadcast, so all replicas end bit-identical. Each replica sends 2 (R-1)/R of the
gradient, like a ring, in two rounds: the all-to-all "butterfly" exchange that suits links where
latency, not bandwidth, is scarce.

Buckets are what lets communication hide behind compute: `begin()` opens a step's `Exchange`, the
stage executor hands it each gradient as backward finishes it (`Exchange.ready`), and a bucket's
shares are encoded and on the wire as soon as its last tensor is final, while backward goes on
with the earlier layers. `Exchange.finish()` sends what is left, then reduces and gathers.

The owner combines the R shares of its chunk with the plan's rule (`--aggregate`, see
`peers.aggregation`): `mean` by default, or `clip`, `trimmed-mean`, `centered-clip`, which survive a
minority of replicas sending garbage. A share that cannot be used (undecodable, NaN/inf) fails the
step under `mean` (`BadMessage`, so it is aborted and rerun, never applied) and is left out of the
aggregate under a robust rule. Either way the owner names the sender: `suspects` counts the steps
each peer was flagged (an unusable share, or one the rule judged an outlier), with one logged
warning per step and sender.

A missing share raises `PeerTimeout` (from the transport) before anything is written back: the
caller aborts the step and the tensors are left as they were.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

import compression

from .aggregation import aggregate, check_rule
from .attack import Attack
from .dataplane.transport import BadMessage, Message, Transport
from .dataplane.wire import GATHER_KIND, REDUCE_KIND
from .protocol.training import BUCKET_VALUES

__all__ = ["GradientAverager", "Exchange"]

# Called with a bucket's gradients before any of them leaves this replica; raising stops the step.
BucketCheck = Callable[[list[torch.Tensor]], None]

_log = logging.getLogger(__name__)


class GradientAverager:
    """Averages a stage's gradients with the other replicas in `group` (peer names, in order).

    Example, on every replica of a stage:

        averager = GradientAverager(transport, ["s1r0", "s1r1"], "q4")
        averager.average(step, [p.grad for p in reversed(list(stage.parameters()))])   # in place

    or, overlapping backward (what `StageExecutor` does during a step's last backward pass):

        exchange = averager.begin(step, [p.numel() for p in order])
        ... exchange.ready(i, order[i].grad) as each gradient becomes final ...
        exchange.finish([p.grad for p in order])

    `codec` is the `--grad` codec; `error_feedback` keeps what compression dropped and adds it
    to the next step's message (needed below ~8 bits). A new group (re-plan) needs a new averager:
    chunk ownership and error buffers belong to one group. `bucket_values` bounds a bucket (one
    tensor larger than that is a bucket of its own); every replica must use the same.

    `aggregate` is the plan's rule (`TrainingSpec.aggregate`): keep `mean` among trusted replicas,
    pick `centered-clip` (or `trimmed-mean`) when a peer may lie; it needs R >= 3 to outvote one
    (see `peers.aggregation` for R <= 2). `suspects` counts, per peer name, the steps this owner
    flagged it. `attack` is the fault injector (`peers.attack`): it acts only when this replica is
    the attack's `replica`, and then tampers with the shares this replica sends.
    """

    def __init__(self, transport: Transport, group: Sequence[str], codec: str = "q4", *,
                 error_feedback: bool = True, timeout: float | None = None, aggregate: str = "mean",
                 attack: Attack | None = None, bucket_values: int = BUCKET_VALUES) -> None:
        if transport.name not in group:
            raise ValueError(f"{transport.name!r} is not in its all-reduce group {list(group)}")
        if len(set(group)) != len(group):
            raise ValueError(f"all-reduce group has duplicate names: {list(group)}")
        if bucket_values <= 0:
            raise ValueError(f"bucket_values must be positive, got {bucket_values}")
        self.transport = transport
        self.group = list(group)
        self.rank = self.group.index(transport.name)
        self.codec = codec
        self.timeout = timeout
        self.aggregate = check_rule(aggregate)
        self.attack = attack if attack is not None and attack.replica == self.rank else None
        self.bucket_values = bucket_values
        self.suspects: Counter[str] = Counter()
        self.bytes_sent = 0
        self.values_sent = 0
        self._sender_feedback = compression.ErrorFeedback(codec) if error_feedback else None
        self._owner_feedback = compression.ErrorFeedback(codec) if error_feedback else None
        if self.attack is not None:
            _log.warning("FAULT INJECTOR ACTIVE: %s (replica %d of %s) sends tampered all-reduce shares (%s)",
                         transport.name, self.rank, self.group, self.attack)

    def average(self, step: int, tensors: Sequence[torch.Tensor]) -> None:
        """Replace every tensor by its average over the group (same shapes on every replica).

        On any error the tensors are untouched and the error-feedback residuals are dropped (they
        belonged to a step that will not be applied), then the error propagates.
        """
        self.begin(step, [t.numel() for t in tensors]).finish(tensors)

    def begin(self, step: int, sizes: Sequence[int], *, check: BucketCheck | None = None) -> Exchange:
        """Open `step`'s exchange of tensors of these sizes (values each), in the order they become
        final; `check` sees each bucket's gradients before they are sent (even with no partners)."""
        return Exchange(self, step, sizes, check)

    def reset(self) -> None:
        """Forget error-feedback residuals (after an aborted step)."""
        for feedback in (self._sender_feedback, self._owner_feedback):
            if feedback is not None:
                feedback.reset()

    def residual_state(self) -> dict[str, Any]:
        """Copies of the error-feedback residuals, keyed by the peer each belongs to and then by
        bucket, with the codec and group they were computed for: without them a resumed replica's
        next step differs."""
        residuals: dict[str, dict[str, dict[int, torch.Tensor]]] = {"sent": {}, "owned": {}}
        for feedback, part in ((self._sender_feedback, "sent"), (self._owner_feedback, "owned")):
            for key, residual in (feedback.residuals() if feedback is not None else {}).items():
                assert isinstance(key, tuple)
                _, member, bucket = key
                residuals[part].setdefault(self.group[member], {})[bucket] = residual
        return {"codec": self.codec, "error_feedback": self._sender_feedback is not None, "group": list(self.group),
                "bucket_values": self.bucket_values, "peer": self.transport.name, **residuals}

    def load_residual_state(self, state: dict[str, Any], *, device: torch.device | str | None = None) -> None:
        """Adopt `residual_state()` of this replica's seat in this very group, residuals on `device`;
        ValueError saying what differs otherwise (another codec, group, bucket size, replica, or
        residuals for peers outside the group)."""
        mine = {"codec": self.codec, "error_feedback": self._sender_feedback is not None,
                "group": list(self.group), "bucket_values": self.bucket_values, "peer": self.transport.name}
        differs = {key: (state.get(key), value) for key, value in mine.items() if state.get(key) != value}
        if differs:
            raise ValueError("all-reduce residuals are from another averager: " + ", ".join(
                f"{key} {theirs!r} (here {ours!r})" for key, (theirs, ours) in differs.items()))
        sent, owned = dict(state.get("sent", {})), dict(state.get("owned", {}))
        others = set(self.group) - {self.transport.name}
        strangers = sorted(set(sent) - others) + sorted(set(owned) - {self.transport.name})
        if strangers:
            raise ValueError(f"all-reduce residuals name peers {strangers} that are not {self.transport.name!r}'s "
                             f"partners (sent) or itself (owned) in group {self.group}")
        for feedback, part, kind in ((self._sender_feedback, sent, REDUCE_KIND),
                                     (self._owner_feedback, owned, GATHER_KIND)):
            if feedback is not None:
                feedback.load_residuals({(kind, self.group.index(name), int(bucket)): value
                                         for name, buckets in part.items() for bucket, value in buckets.items()},
                                        device=device)

    # ---- an exchange's phases, run by `Exchange`: send_shares, reduce, flag, gather ----------------

    def send_shares(self, step: int, bucket: int, flat: torch.Tensor) -> None:
        """Send every other owner its share of `bucket` (its gradients flattened)."""
        for owner, (start, stop) in enumerate(_chunk_bounds(flat.numel(), len(self.group))):
            if owner != self.rank:
                payload = self._share(step, owner, bucket, flat[start:stop])
                self._send(owner, REDUCE_KIND, step, bucket, payload, stop - start)

    def reduce(self, step: int, bucket: int, flat: torch.Tensor, flagged: dict[int, str]) -> bytes:
        """Aggregate the shares of this replica's chunk of `bucket`: the encoded result. Senders of
        unusable or outlier shares land in `flagged`; under `mean` an unusable one fails the step."""
        start, stop = _chunk_bounds(flat.numel(), len(self.group))[self.rank]
        shares, members = [], []
        for member in range(len(self.group)):  # fixed order: the result never depends on arrival order
            if member == self.rank:
                shares.append(flat[start:stop])
                members.append(member)
                continue
            try:
                shares.append(self._receive(member, REDUCE_KIND, step, bucket, self.rank, stop - start, flat.device))
                members.append(member)
            except BadMessage as error:
                if self.aggregate == "mean":  # nothing to outvote it with: the step fails
                    flagged[member] = f"{error.reason} share, step fails: {error.detail}"
                    self.flag(step, flagged)
                    raise
                flagged.setdefault(member, f"{error.reason} share, left out: {error.detail}")
        result = aggregate(self.aggregate, torch.stack(shares))
        for row in result.outliers:
            if members[row] != self.rank:
                flagged.setdefault(members[row], "outlier share")
        mine = self._encode(self._owner_feedback, (GATHER_KIND, self.rank, bucket), result.value, step)
        for member in range(len(self.group)):
            if member != self.rank:
                self._send(member, GATHER_KIND, step, bucket, mine, stop - start)
        return mine

    def gather(self, step: int, bucket: int, mine: bytes, flat: torch.Tensor) -> torch.Tensor:
        """Collect every owner's broadcast chunk of `bucket`; everyone decodes the same bytes."""
        averaged = torch.empty_like(flat)
        for owner, (start, stop) in enumerate(_chunk_bounds(flat.numel(), len(self.group))):
            if owner == self.rank:
                averaged[start:stop] = compression.decode(mine, device=flat.device).reshape(-1)
                continue
            try:  # the only copy of that chunk: a bad one fails the step whatever the rule
                averaged[start:stop] = self._receive(owner, GATHER_KIND, step, bucket, owner, stop - start,
                                                     flat.device)
            except BadMessage as error:
                self.flag(step, {owner: f"{error.reason} broadcast of its chunk: {error.detail}"})
                raise
        return averaged

    def _share(self, step: int, owner: int, bucket: int, chunk: torch.Tensor) -> bytes:
        """This replica's encoded share of `owner`'s chunk (tampered with under an attack)."""
        key = (REDUCE_KIND, owner, bucket)
        if self.attack is None:
            return self._encode(self._sender_feedback, key, chunk, step)
        return self.attack.frame(chunk, step, _seed(step, self.rank, key),
                                 lambda values: self._encode(self._sender_feedback, key, values, step))

    def flag(self, step: int, flagged: dict[int, str]) -> None:
        """Count and log each flagged sender once for this step."""
        for member, why in sorted(flagged.items()):
            name = self.group[member]
            self.suspects[name] += 1
            _log.warning("all-reduce step %d: %s flags %r (%s) under --aggregate %s", step, self.transport.name,
                         name, why, self.aggregate)

    def _encode(self, feedback: compression.ErrorFeedback | None, key: tuple[str, int, int], chunk: torch.Tensor,
                step: int) -> bytes:
        seed = _seed(step, self.rank, key)
        if feedback is None:
            return compression.encode(chunk, self.codec, seed=seed)
        return feedback.encode(key, chunk, seed=seed)

    def _send(self, member: int, kind: str, step: int, bucket: int, payload: bytes, values: int) -> None:
        owner = member if kind == REDUCE_KIND else self.rank
        self.transport.send(self.group[member], Message(kind=kind, step=step, index=self._index(bucket, owner),
                                                        payload=payload))
        self.bytes_sent += len(payload)
        self.values_sent += values

    def _receive(self, member: int, kind: str, step: int, bucket: int, owner: int, expected: int,
                 device: torch.device) -> torch.Tensor:
        """The decoded chunk from `member`; BadMessage naming it when the frame is unusable."""
        message = self.transport.recv(self.group[member], kind, step, self._index(bucket, owner),
                                      timeout=self.timeout)
        sender = self.group[member]
        what = f"{kind} chunk {owner} of bucket {bucket}, step {step}"
        try:  # the group's codec and the chunk's length, checked from the header before decoding
            values = compression.decode(message.payload, device=device, codec=self.codec, shape=(expected,)).float()
        except compression.CodecError as error:
            raise BadMessage(sender, "malformed", f"{what}: {error} (the replicas disagree on the codec or the "
                             "stage's shapes, or the frame is corrupted or forged)") from None
        if not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise BadMessage(sender, "nonfinite", f"{what} decodes to {bad} NaN/inf values of {expected}")
        return values

    def _index(self, bucket: int, owner: int) -> int:
        """A message's index: which bucket, and whose chunk of it."""
        return bucket * len(self.group) + owner


class Exchange:
    """One step's all-reduce in flight (open it with `GradientAverager.begin`).

    `ready(i, grad)` says tensor i's gradient is final; when that completes a bucket, the bucket is
    checked and its shares go out at once. `finish(tensors)` sends the buckets not sent yet, reduces
    this replica's chunks, gathers the others' and writes the average into `tensors`. Any error
    drops the step's error-feedback residuals and leaves `tensors` untouched.
    """

    def __init__(self, averager: GradientAverager, step: int, sizes: Sequence[int], check: BucketCheck | None) -> None:
        self.averager, self.step, self._check = averager, step, check
        self.buckets = _buckets(sizes, averager.bucket_values)
        self._bucket_of = {index: bucket for bucket, members in enumerate(self.buckets) for index in members}
        self._waiting = set(range(len(sizes)))  # tensors whose gradient is not final yet
        self._held: dict[int, torch.Tensor] = {}  # index -> final gradient, until its bucket goes out
        self._sent: dict[int, torch.Tensor] = {}  # bucket -> its flattened gradients, as sent

    def ready(self, index: int, grad: torch.Tensor) -> None:
        """Tensor `index`'s gradient is final: send its bucket if that was the bucket's last one."""
        if index not in self._waiting:
            raise ValueError(f"step {self.step}: tensor {index} was already reported final (or is out of range)")
        self._waiting.remove(index)
        self._held[index] = grad
        bucket = self._bucket_of[index]
        if all(member in self._held for member in self.buckets[bucket]):
            self._guarded(lambda: self._send(bucket, [self._held.pop(member) for member in self.buckets[bucket]]))

    def finish(self, tensors: Sequence[torch.Tensor]) -> None:
        """Send the rest, reduce and gather every bucket, write the averages into `tensors`."""
        if len(tensors) != len(self._bucket_of):
            raise ValueError(f"step {self.step}: the exchange was opened for {len(self._bucket_of)} tensors, "
                             f"finished with {len(tensors)}")
        self._guarded(lambda: self._finish(tensors))

    def _finish(self, tensors: Sequence[torch.Tensor]) -> None:
        averager = self.averager
        for bucket, members in enumerate(self.buckets):
            if any(member in self._waiting for member in members):  # else it went out in ready()
                self._send(bucket, [tensors[member] for member in members])
        if len(averager.group) == 1:
            return
        flagged: dict[int, str] = {}
        sent = sorted(self._sent.items())  # every bucket, in the order backward finished them
        mine = [averager.reduce(self.step, bucket, flat, flagged) for bucket, flat in sent]
        averager.flag(self.step, flagged)
        averaged = [averager.gather(self.step, bucket, mine[bucket], flat) for bucket, flat in sent]
        for members, values in zip(self.buckets, averaged, strict=True):
            offset = 0
            for member in members:
                tensor = tensors[member]
                tensor.copy_(values[offset:offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()

    def _send(self, bucket: int, grads: list[torch.Tensor]) -> None:
        if self._check is not None:
            self._check(grads)
        if len(self.averager.group) == 1:
            return  # nothing to average with: the check was the whole job
        flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
        self._sent[bucket] = flat
        self.averager.send_shares(self.step, bucket, flat)

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException:
            self.averager.reset()
            raise


def _buckets(sizes: Sequence[int], bucket_values: int) -> list[list[int]]:
    """Consecutive tensor indices grouped into buckets of at most `bucket_values` values (a larger
    tensor alone); an empty list of sizes has no bucket."""
    buckets: list[list[int]] = []
    filled = 0
    for index, size in enumerate(sizes):
        if not buckets or (filled + size > bucket_values and filled > 0):
            buckets.append([])
            filled = 0
        buckets[-1].append(index)
        filled += size
    return buckets


def _chunk_bounds(count: int, parts: int) -> list[tuple[int, int]]:
    base, extra = divmod(count, parts)
    bounds, start = [], 0
    for part in range(parts):
        stop = start + base + (1 if part < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _seed(step: int, rank: int, key: tuple[str, int, int]) -> int:
    kind, member, bucket = key
    return (step * 1_000_003 + rank * 7_919 + member * 104_729 + bucket * 15_485_863 + len(kind)) & 0x7FFFFFFF
