"""The stage executor: one (stage, replica) of the grid, running one training step at a time.

A `StageExecutor` owns a stage module and its AdamW state, and talks to its pipeline neighbours
and its data-parallel group only through a `Transport`, so the same class runs in the
one-process grid of `swarm-sim local` and in a live peer over zmq. A step either completes
(forward and backward over every micro-batch, gradients averaged with the replicas, optimizer
applied) or raises - `PeerTimeout` from a silent neighbour, `TransportClosed` on abort,
`BadMessage` for a neighbour's frame that does not decode or carries NaN/inf, `NonFiniteStep`
when this worker's own loss, activations or gradients diverge (nothing of them is sent) - before
the optimizer touches a parameter: no half-applied update. Each fails the step, never the process.

A live peer must not apply a step before the coordinator knows every replica of every stage
finished it, so a step can also stop after the all-reduce (`run_step(..., apply=False)`) and be
settled later by `apply_update()` or `discard_update()`.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import torch
from torch import nn

import compression
from models import Batch, Stage, param_checksum

from ..allreduce import Exchange, GradientAverager
from ..attack import Attack
from ..dataplane.transport import BadMessage, Message, Transport
from ..dataplane.wire import ACT_KIND, GRAD_KIND
from ..protocol import Codecs, ComputeDtype
from .channels import ActivationChannel, ChannelStats
from .checks import NonFiniteStep, received, sendable
from .schedule import get_schedule
from .timing import StepTimes

__all__ = ["StageExecutor", "StepResult", "OptimizerSettings", "NonFiniteStep"]

# Frozen, so one instance can be every executor's default.
_AC_SGD_CODECS = Codecs()


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW hyper-parameters; `warmup_steps` ramps the learning rate linearly from 0.

    Weight decay skips biases and norm gains (1-D parameters), as GPT training does.
    """

    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 0

    def lr_at(self, step: int) -> float:
        """The learning rate of `step` (1-based): `lr` after the linear warm-up."""
        if self.warmup_steps <= 0:
            return self.lr
        return self.lr * min(1.0, step / self.warmup_steps)


@dataclass
class StepResult:
    """What one worker did in a step. `loss` (mean over micro-batches) only on the last stage."""

    step: int
    loss: float | None
    stats: ChannelStats
    tokens: int
    seconds: float
    times: StepTimes = field(default_factory=StepTimes)  # where `seconds` went


class StageExecutor:
    """Stage `stage_index` of `num_stages`, replica `group.index(transport.name)` of its stage.

    Example (a live peer builds one; `swarm-sim local` builds S x R of them over one hub):

        worker = StageExecutor(models.build_stage(config, [2, 2], 1), stage_index=1, num_stages=2,
                             transport=transport, prev="s0r0", next=None, group=["s1r0", "s1r1"],
                             codecs=Codecs("q3", "q6", "q4"), micro_batches=4)
        result = worker.run_step(step, batch)   # batch on the first and last stage, else None

    prev / next: transport names of the pipeline neighbours (None at the ends). group: transport
    names of this stage's replicas, in the same order on every replica. timeout: seconds any
    single receive may wait before `PeerTimeout` aborts the step (None waits forever).
    delta_capacity: samples the AQ-SGD memory must hold (with `codecs.forward_delta`).
    compute_dtype: "bf16" runs forward and backward under bf16 autocast (activations and their
    gradients travel as bf16 frames); parameters, gradients and AdamW state stay in the stage's
    own dtype, so the all-reduce, checksums and checkpoints are the same as with "fp32".
    aggregate: the all-reduce's rule (`TrainingSpec.aggregate`, see `peers.aggregation`); attack:
    a fault injector (`peers.attack`), active only when this worker is the attack's replica.
    """

    def __init__(self, stage: Stage, *, stage_index: int, num_stages: int, transport: Transport,
                 prev: str | None, next: str | None, group: Sequence[str], codecs: Codecs = _AC_SGD_CODECS,
                 schedule: str = "1f1b", micro_batches: int = 1, optimizer: OptimizerSettings = OptimizerSettings(),
                 timeout: float | None = None, seed: int = 0, delta_capacity: int | None = None,
                 compute_dtype: ComputeDtype = "fp32", aggregate: str = "mean", attack: Attack | None = None) -> None:
        if (prev is None) != (stage_index == 0) or (next is None) != (stage_index == num_stages - 1):
            raise ValueError(f"stage {stage_index} of {num_stages} needs prev only after stage 0 and next only "
                             f"before the last stage (got prev={prev!r}, next={next!r})")
        if micro_batches <= 0:
            raise ValueError(f"--micro-batches must be positive, got {micro_batches}")
        codecs.check()
        self.stage = stage
        self.stage_index = stage_index
        self.num_stages = num_stages
        self.transport = transport
        self.prev = prev
        self.next = next
        self.codecs = codecs
        self.micro_batches = micro_batches
        self.settings = optimizer
        self.timeout = timeout
        self.seed = seed
        self.ops = get_schedule(schedule)(stage_index, num_stages, micro_batches)
        self.averager = GradientAverager(transport, group, codecs.gradient, timeout=timeout, aggregate=aggregate,
                                         attack=attack)
        self.optimizer = _adamw(stage, optimizer)
        # Gradients become final in reverse order of the forward pass: the all-reduce's bucket order.
        self._reduce_order = list(reversed(list(stage.parameters())))
        self._last_backward = max(position for position, (op, _) in enumerate(self.ops) if op == "B")
        self._outgoing = ActivationChannel(codecs.forward, delta=codecs.forward_delta, capacity=delta_capacity)
        self._incoming = ActivationChannel(codecs.forward, delta=codecs.forward_delta, capacity=delta_capacity)
        reference = list(stage.parameters())[0]  # (`next` is shadowed by a parameter here)
        self._dtype, self._device = reference.dtype, reference.device
        self._autocast = compute_dtype == "bf16"
        self._pending: int | None = None  # the step run with apply=False, until it is settled

    @property
    def first(self) -> bool:
        """Whether this worker holds stage 0 (embeddings; reads token ids)."""
        return self.stage_index == 0

    @property
    def last(self) -> bool:
        """Whether this worker holds the last stage (head and loss; reads targets)."""
        return self.stage_index == self.num_stages - 1

    @property
    def pending_step(self) -> int | None:
        """The step prepared by `run_step(..., apply=False)` and not yet applied or discarded."""
        return self._pending

    def run_step(self, step: int, batch: Batch | None = None, *, apply: bool = True) -> StepResult:
        """Forward and backward over the micro-batches, average gradients, apply AdamW.

        `batch` (a `models.Batch`, this replica's share of the global batch) is required on the
        first and the last stage (token ids in, targets out) and ignored elsewhere. With
        `apply=False` the step stops after the all-reduce: the averaged gradients wait in `.grad`
        until `apply_update()` or `discard_update()` (the live swarm's two-phase commit).
        """
        micro: list[Batch] = []
        if self.first or self.last:
            if batch is None:
                raise ValueError(f"stage {self.stage_index} is first or last and needs this replica's batch")
            micro = batch.chunk(self.micro_batches)
        if self._pending is not None:
            raise RuntimeError(f"step {self._pending} is prepared but neither applied nor discarded; "
                               f"settle it before running step {step}")
        started = time.perf_counter()
        work = _Step(step, micro)
        try:
            self._train(work)
        except BaseException:
            self._outgoing.forget(work.sent)  # the receiver may not have applied these deltas
            raise
        self._pending = step
        if apply:
            self.apply_update()
        loss = sum(work.losses) / len(work.losses) if work.losses else None
        return StepResult(step, loss, work.stats, work.tokens, time.perf_counter() - started, work.times)

    def apply_update(self) -> None:
        """Apply AdamW to the prepared step's averaged gradients, at that step's learning rate."""
        if self._pending is None:
            raise RuntimeError("apply_update without a prepared step: call run_step(..., apply=False) first")
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.lr_at(self._pending)
        self.optimizer.step()
        self._pending = None

    def discard_update(self) -> None:
        """Drop the prepared step, if any: parameters and Adam state stay as they were.

        The all-reduce's error-feedback residuals go too: they hold what compression dropped from
        gradients that will never be applied (every replica discards alike, as on an abort).
        """
        if self._pending is not None:
            self.averager.reset()
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        """Parameters and optimizer state (copies): what a newcomer fetches and a checkpoint stores.

        Copies, because torch's state dicts alias the live tensors, and a receiver in the same
        process would otherwise share Adam moments with the donor.
        """
        return copy.deepcopy({"model": self.stage.state_dict(), "optimizer": self.optimizer.state_dict()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Adopt a `state_dict()` of a replica of this stage (parameters and AdamW moments)."""
        self.stage.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def codec_state(self) -> dict[str, Any]:
        """Copies of the compression state that carries across steps, which `state_dict()` lacks: the
        all-reduce's error-feedback residuals and the AQ-SGD memories of both forward links (the
        backward channel is stateless). With it a restored executor repeats the original bit for bit.
        Only tensors, ints, strings, lists and dicts: `torch.load(weights_only=True)` accepts it."""
        state = {**self._codec_identity(), "gradient": self.averager.residual_state(),
                 "outgoing": self._outgoing.state(), "incoming": self._incoming.state()}
        if self._pending is not None:  # recorded so that loading refuses it
            state["pending_step"] = self._pending
        return state

    def load_codec_state(self, state: dict[str, Any]) -> None:
        """Adopt `codec_state()` of this cell (after `load_state_dict`); ValueError saying what differs
        for another codec, AQ-SGD capacity, group or neighbours, or a state taken mid-step. Atomic."""
        for where, step in (("here", self._pending), ("in that state", state.get("pending_step"))):
            if step is not None:
                raise ValueError(f"step {step} is prepared but not applied {where}; codec state only moves "
                                 "between settled steps")
        differs = [f"{key} {state.get(key)!r} (here {value!r})"
                   for key, value in self._codec_identity().items() if state.get(key) != value]
        if differs:
            raise ValueError("codec state is from another executor: " + ", ".join(differs))
        before = self.codec_state()
        try:
            self.averager.load_residual_state(state.get("gradient", {}), device=self._device)
            self._outgoing.load_state(state.get("outgoing", {}), device=self._device)
            self._incoming.load_state(state.get("incoming", {}), device=self._device)
        except BaseException:
            self.load_codec_state(before)
            raise

    def param_checksum(self) -> str:
        """sha256 of this stage's parameters: replicas of a stage must agree after every step."""
        return param_checksum(self.stage)

    def _train(self, work: "_Step") -> None:
        """The schedule's forward and backward passes; during the last backward pass each bucket of
        gradients goes to the all-reduce as soon as it is final, the rest after it."""
        self.optimizer.zero_grad(set_to_none=False)
        before = self.averager.bytes_sent, self.averager.values_sent
        exchange = self.averager.begin(work.step, [p.numel() for p in self._reduce_order],
                                       check=lambda grads: self._check_gradients(work.step, grads))
        for position, (op, m) in enumerate(self.ops):
            if op == "F":
                self._forward(work, m)
            elif position == self._last_backward:
                with self._overlapping(exchange):
                    self._backward(work, m)
            else:
                self._backward(work, m)
        with work.times.timing("allreduce_s"):
            exchange.finish([self._gradient(p) for p in self._reduce_order])
        work.stats.add("gradient", self.averager.bytes_sent - before[0], self.averager.values_sent - before[1])

    @contextmanager
    def _overlapping(self, exchange: Exchange) -> Iterator[None]:
        """Hand each parameter's gradient to `exchange` the moment backward has accumulated it."""
        handles = [p.register_post_accumulate_grad_hook(  # type: ignore[no-untyped-call]  # torch leaves it untyped
            lambda p, i=i: exchange.ready(i, self._gradient(p))) for i, p in enumerate(self._reduce_order)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _check_gradients(self, step: int, grads: list[torch.Tensor]) -> None:
        """Refuse to send a bucket holding NaN or inf: the step is aborted, nothing of it applied."""
        if not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            raise NonFiniteStep(f"step {step}: stage {self.stage_index}'s gradients hold NaN or inf; "
                                "none of them sent to the all-reduce, the step is aborted")

    @staticmethod
    def _gradient(parameter: nn.Parameter) -> torch.Tensor:
        assert parameter.grad is not None  # `_adamw` gave every parameter one, zero_grad keeps it
        return parameter.grad

    def _forward(self, work: "_Step", m: int) -> None:
        if self.prev is None:  # stage 0: token ids from the batch
            sample_ids = work.micro[m].sample_ids
            x = work.micro[m].inputs.to(self._device)
        else:
            with work.times.timing("wait_forward_s"):
                message = self.transport.recv(self.prev, ACT_KIND, work.step, m, timeout=self.timeout)
            sample_ids = received(self.prev, f"activations of step {work.step} micro-batch {m}",
                                   lambda: torch.tensor(message.sample_ids, dtype=torch.long), check=False)

            def decode() -> torch.Tensor:
                shape = self._activation_shape(work, m, len(message.sample_ids), message.payload)
                return self._incoming.decode(sample_ids, message.payload, self._device, shape=shape)

            x = received(self.prev, f"activations of step {work.step} micro-batch {m}", decode)
            x = x.to(self._dtype).requires_grad_(True)
        work.tokens += int(x.shape[0] * x.shape[1])
        with torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=self._autocast):
            out = self.stage(x)
            if self.next is None:  # the last stage: the loss against this replica's targets
                expected = work.micro[m].sample_ids
                if not torch.equal(sample_ids, expected):
                    assert self.prev is not None  # stage 0 reads its own batch: a mismatch is a neighbour's
                    raise BadMessage(self.prev, "malformed", f"step {work.step} micro-batch {m}: the pipeline "
                                     f"delivered samples {sample_ids.tolist()[:8]} but this replica's batch "
                                     f"holds {expected.tolist()[:8]}")
                out = self.stage.loss(out, work.micro[m].targets.to(self._device))
        if self.next is None:
            loss = out.item()
            if not math.isfinite(loss):
                raise NonFiniteStep(f"step {work.step} micro-batch {m}: the loss is {loss}; the step is aborted "
                                    "before its gradients are sent or applied")
            work.losses.append(loss)
        else:
            work.sent.extend(sample_ids.tolist())
            sent = out.detach().to(torch.bfloat16) if self._autocast else out.detach()
            payload = sendable(lambda: self._outgoing.encode(sample_ids, sent, seed=self._seed(work.step, m, 0)),
                                sent, f"step {work.step} micro-batch {m}: the activations")
            self.transport.send(self.next, Message(kind=ACT_KIND, step=work.step, index=m, payload=payload,
                                                   sample_ids=tuple(sample_ids.tolist())))
            work.stats.add("forward", len(payload), out.numel())
        work.stash[m] = (x, out)

    def _backward(self, work: "_Step", m: int) -> None:
        inputs, out = work.stash.pop(m)
        if self.next is None:
            torch.autograd.backward(out / self.micro_batches)  # out is this micro-batch's mean loss
        else:
            with work.times.timing("wait_backward_s"):
                message = self.transport.recv(self.next, GRAD_KIND, work.step, m, timeout=self.timeout)
            # The plan's codec and the activations' shape, checked from the header before decoding.
            grad = received(self.next, f"gradients of step {work.step} micro-batch {m}",
                             lambda: compression.decode(message.payload, device=self._device,
                                                        codec=self.codecs.backward, shape=tuple(out.shape)))
            grad = grad.to(out.dtype)
            torch.autograd.backward(out, grad)
        if self.prev is not None:  # the received activations' gradient goes back upstream
            if inputs.grad is None:
                raise RuntimeError(f"stage {self.stage_index}'s output does not depend on its input activations")
            returned = inputs.grad.to(torch.bfloat16) if self._autocast else inputs.grad
            payload = sendable(lambda: compression.encode(returned, self.codecs.backward,
                                                           seed=self._seed(work.step, m, 1)),
                                returned, f"step {work.step} micro-batch {m}: the input gradients")
            self.transport.send(self.prev, Message(kind=GRAD_KIND, step=work.step, index=m, payload=payload))
            work.stats.add("backward", len(payload), inputs.grad.numel())

    def _activation_shape(self, work: "_Step", m: int, rows: int, payload: bytes | memoryview) -> tuple[int, ...]:
        """[rows, length, d_model] that incoming activations must have: the length of this replica's
        micro-batch on the last stage, elsewhere the sender's (from the header) up to the context."""
        config = self.stage.config
        if work.micro:
            return (rows, int(work.micro[m].inputs.shape[-1]), config.d_model)
        claimed = self._incoming.shape_of(payload)
        length = claimed[1] if len(claimed) == 3 and 1 <= claimed[1] <= config.context else config.context
        return (rows, length, config.d_model)

    def _codec_identity(self) -> dict[str, Any]:
        """What a codec state must have been taken under: the codecs and this cell's neighbours."""
        return {"codecs": msgspec.structs.asdict(self.codecs),
                "layout": {"stage": self.stage_index, "stages": self.num_stages, "prev": self.prev or "",
                           "next": self.next or ""}}

    def _seed(self, step: int, micro_batch: int, channel: int) -> int:
        """Stochastic-rounding seed: a run repeats exactly, and no two messages share noise."""
        key = (self.seed, step, self.stage_index, self.averager.rank, micro_batch, channel)
        return hash(key) & 0x7FFFFFFF


@dataclass
class _Step:
    """What one step accumulates while its schedule runs."""

    step: int
    micro: list[Batch]  # this replica's micro-batches on the first and last stage, else empty
    stats: ChannelStats = field(default_factory=ChannelStats)
    times: StepTimes = field(default_factory=StepTimes)
    # micro-batch -> (inputs, outputs) until its backward pass
    stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # sample ids whose activations went downstream
    tokens: int = 0


def _adamw(stage: nn.Module, settings: OptimizerSettings) -> torch.optim.AdamW:
    decay = [p for p in stage.parameters() if p.dim() >= 2]
    no_decay = [p for p in stage.parameters() if p.dim() < 2]
    for p in stage.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=settings.lr, betas=settings.betas, eps=settings.eps)

