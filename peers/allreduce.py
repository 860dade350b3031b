"""Data-parallel gradient averaging over any `Transport`: reduce-scatter, then all-gather.

The R replicas of a stage flatten their gradients into one vector cut into R chunks; replica j
owns chunk j. Each replica sends its compressed share of chunk j to owner j (error feedback on
the sender), the owner decodes the shares and sums them in group order (fixed, so arrival order
never matters), re-encodes the average (error feedback on the owner too) and broadcasts it.
Every replica, the owner included, writes back the *decoded* broadcast, so all replicas end
bit-identical. Each replica sends 2 (R-1)/R of the gradient, like a ring, in two rounds: the
all-to-all "butterfly" exchange that suits links where latency, not bandwidth, is scarce.

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
from collections.abc import Sequence
from typing import Any

import torch

import compression

from .aggregation import aggregate, check_rule
from .attack import Attack
from .dataplane.transport import BadMessage, Message, Transport
from .dataplane.wire import GATHER_KIND, REDUCE_KIND

__all__ = ["GradientAverager"]

_log = logging.getLogger(__name__)


class GradientAverager:
    """Averages a stage's gradients with the other replicas in `group` (peer names, in order).

    Example, on every replica of a stage:

        averager = GradientAverager(transport, ["s1r0", "s1r1"], "q4")
        averager.average(step, [p.grad for p in stage.parameters()])   # in place

    `codec` is the `--grad` codec; `error_feedback` keeps what compression dropped and adds it
    to the next step's message (needed below ~8 bits). A new group (re-plan) needs a new averager:
    chunk ownership and error buffers belong to one group.

    `aggregate` is the plan's rule (`TrainingSpec.aggregate`): keep `mean` among trusted replicas,
    pick `centered-clip` (or `trimmed-mean`) when a peer may lie; it needs R >= 3 to outvote one
    (see `peers.aggregation` for R <= 2). `suspects` counts, per peer name, the steps this owner
    flagged it. `attack` is the fault injector (`peers.attack`): it acts only when this replica is
    the attack's `replica`, and then tampers with the shares this replica sends.
    """

    def __init__(self, transport: Transport, group: Sequence[str], codec: str = "q4", *,
                 error_feedback: bool = True, timeout: float | None = None,
                 aggregate: str = "mean", attack: Attack | None = None) -> None:
        if transport.name not in group:
            raise ValueError(f"{transport.name!r} is not in its all-reduce group {list(group)}")
        if len(set(group)) != len(group):
            raise ValueError(f"all-reduce group has duplicate names: {list(group)}")
        self.transport = transport
        self.group = list(group)
        self.rank = self.group.index(transport.name)
        self.codec = codec
        self.timeout = timeout
        self.aggregate = check_rule(aggregate)
        self.attack = attack if attack is not None and attack.replica == self.rank else None
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
        if len(self.group) == 1 or not tensors:
            return
        try:
            self._average(step, tensors)
        except BaseException:
            self.reset()
            raise

    def reset(self) -> None:
        """Forget error-feedback residuals (after an aborted step)."""
        for feedback in (self._sender_feedback, self._owner_feedback):
            if feedback is not None:
                feedback.reset()

    def residual_state(self) -> dict[str, Any]:
        """Copies of the error-feedback residuals, keyed by the peer each belongs to, with the codec
        and group they were computed for: without them a resumed replica's next step differs."""
        residuals: dict[str, dict[str, torch.Tensor]] = {"sent": {}, "owned": {}}
        for feedback, part in ((self._sender_feedback, "sent"), (self._owner_feedback, "owned")):
            for key, residual in (feedback.residuals() if feedback is not None else {}).items():
                assert isinstance(key, tuple)
                residuals[part][self.group[key[1]]] = residual
        return {"codec": self.codec, "error_feedback": self._sender_feedback is not None, "group": list(self.group),
                "peer": self.transport.name, **residuals}

    def load_residual_state(self, state: dict[str, Any], *, device: torch.device | str | None = None) -> None:
        """Adopt `residual_state()` of this replica's seat in this very group, residuals on `device`;
        ValueError saying what differs otherwise (another codec, group, replica, or residuals for
        peers outside the group)."""
        mine = {"codec": self.codec, "error_feedback": self._sender_feedback is not None,
                "group": list(self.group), "peer": self.transport.name}
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
        for feedback, part, kind in ((self._sender_feedback, sent, "reduce"), (self._owner_feedback, owned, "gather")):
            if feedback is not None:
                feedback.load_residuals({(kind, self.group.index(name)): value for name, value in part.items()},
                                        device=device)

    def _average(self, step: int, tensors: Sequence[torch.Tensor]) -> None:
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        bounds = _chunk_bounds(flat.numel(), len(self.group))
        mine = self._reduce_scatter(step, flat, bounds)
        averaged = self._all_gather(step, mine, bounds, flat)
        offset = 0
        for tensor in tensors:
            count = tensor.numel()
            tensor.copy_(averaged[offset:offset + count].view_as(tensor))
            offset += count

    def _reduce_scatter(self, step: int, flat: torch.Tensor, bounds: list[tuple[int, int]]) -> bytes:
        """Send every other owner its share, aggregate the shares of this replica's chunk: the encoded result."""
        for owner, (start, stop) in enumerate(bounds):
            if owner != self.rank:
                payload = self._share(step, owner, flat[start:stop])
                self._send(owner, REDUCE_KIND, step, payload, stop - start)
        start, stop = bounds[self.rank]
        shares, members, flagged = [], [], {}
        for member in range(len(self.group)):  # fixed order: the result never depends on arrival order
            if member == self.rank:
                shares.append(flat[start:stop])
                members.append(member)
                continue
            try:
                shares.append(self._receive(member, REDUCE_KIND, step, self.rank, stop - start, flat.device))
                members.append(member)
            except BadMessage as error:
                if self.aggregate == "mean":  # nothing to outvote it with: the step fails
                    flagged[member] = f"{error.reason} share, step fails: {error.detail}"
                    self._flag(step, flagged)
                    raise
                flagged[member] = f"{error.reason} share, left out: {error.detail}"
        result = aggregate(self.aggregate, torch.stack(shares))
        for row in result.outliers:
            if members[row] != self.rank:
                flagged.setdefault(members[row], "outlier share")
        self._flag(step, flagged)
        return self._encode(self._owner_feedback, ("gather", self.rank), result.value, step)

    def _share(self, step: int, owner: int, chunk: torch.Tensor) -> bytes:
        """This replica's encoded share of `owner`'s chunk (tampered with under an attack)."""
        key = ("reduce", owner)
        if self.attack is None:
            return self._encode(self._sender_feedback, key, chunk, step)
        return self.attack.frame(chunk, step, _seed(step, self.rank, key),
                                 lambda values: self._encode(self._sender_feedback, key, values, step))

    def _flag(self, step: int, flagged: dict[int, str]) -> None:
        """Count and log each flagged sender once for this step."""
        for member, why in sorted(flagged.items()):
            name = self.group[member]
            self.suspects[name] += 1
            _log.warning("all-reduce step %d: %s flags %r (%s) under --aggregate %s", step, self.transport.name,
                         name, why, self.aggregate)

    def _all_gather(self, step: int, mine: bytes, bounds: list[tuple[int, int]], flat: torch.Tensor) -> torch.Tensor:
        """Broadcast this replica's encoded aggregate, collect the others'; everyone decodes the same bytes."""
        start, stop = bounds[self.rank]
        for member in range(len(self.group)):
            if member != self.rank:
                self._send(member, GATHER_KIND, step, mine, stop - start)
        averaged = torch.empty_like(flat)
        for owner, (start, stop) in enumerate(bounds):
            if owner == self.rank:
                averaged[start:stop] = compression.decode(mine, device=flat.device).reshape(-1)
            else:
                try:  # the only copy of that chunk: a bad one fails the step whatever the rule
                    averaged[start:stop] = self._receive(owner, GATHER_KIND, step, owner, stop - start, flat.device)
                except BadMessage as error:
                    self._flag(step, {owner: f"{error.reason} broadcast of its chunk: {error.detail}"})
                    raise
        return averaged

    def _encode(self, feedback: compression.ErrorFeedback | None, key: tuple[str, int], chunk: torch.Tensor,
                step: int) -> bytes:
        seed = _seed(step, self.rank, key)
        if feedback is None:
            return compression.encode(chunk, self.codec, seed=seed)
        return feedback.encode(key, chunk, seed=seed)

    def _send(self, member: int, kind: str, step: int, payload: bytes, values: int) -> None:
        index = member if kind == REDUCE_KIND else self.rank
        self.transport.send(self.group[member], Message(kind=kind, step=step, index=index, payload=payload))
        self.bytes_sent += len(payload)
        self.values_sent += values

    def _receive(self, member: int, kind: str, step: int, index: int, expected: int,
                 device: torch.device) -> torch.Tensor:
        """The decoded chunk from `member`; BadMessage naming it when the frame is unusable."""
        message = self.transport.recv(self.group[member], kind, step, index, timeout=self.timeout)
        sender = self.group[member]
        try:  # the group's codec and the chunk's length, checked from the header before decoding
            values = compression.decode(message.payload, device=device, codec=self.codec, shape=(expected,)).float()
        except compression.CodecError as error:
            raise BadMessage(sender, "malformed", f"{kind} chunk {index} of step {step}: {error} (the "
                             "replicas disagree on the codec or the stage's shapes, or the frame is corrupted "
                             "or forged)") from None
        if not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise BadMessage(sender, "nonfinite", f"{kind} chunk {index} of step {step} decodes to "
                             f"{bad} NaN/inf values of {expected}")
        return values


def _chunk_bounds(count: int, parts: int) -> list[tuple[int, int]]:
    base, extra = divmod(count, parts)
    bounds, start = [], 0
    for part in range(parts):
        stop = start + base + (1 if part < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _seed(step: int, rank: int, key: tuple[str, int]) -> int:
    return (step * 1_000_003 + rank * 7_919 + key[1] * 104_729 + len(key[0])) & 0x7FFFFFFF
