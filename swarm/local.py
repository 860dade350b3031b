"""A whole S x R training grid in one process: the pipeline engine proven before the network is.

Every (stage, replica) is a real `StageExecutor` on its own thread, wired through an in-process
`InProcessHub`, so the messages, codecs, schedules and all-reduce are exactly those of the live
swarm - only the transport differs. Results are deterministic: reductions run in fixed order and
stochastic rounding is seeded per message, so thread timing never changes a number.

    report = run_local(LocalConfig(stages=4, replicas=2, micro_batches=2, batch=8, steps=50))
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass

import torch

import models
from peers.pipeline import ChannelCodecs, ChannelStats, OptimizerSettings, StageExecutor, get_schedule
from peers.profiling import check_device
from peers.transport import InProcessHub

__all__ = ["LocalConfig", "LocalGrid", "run_local", "worker_name"]


@dataclass
class LocalConfig:
    """Everything `swarm-sim local` takes; field names follow its flags (`micro_batches` is `--micro-batches`).

    batch: sequences per step over the whole grid; each replica gets batch / replicas of them,
    cut into micro_batches. layers: layers per stage (default: as even as possible).
    train_samples / eval_samples: keep only the first sequences of each split (a fine-tuning-
    sized subset where samples repeat, as AQ-SGD needs). eval_every: steps between evaluations
    (0: only at the end). device: where every stage computes ("cpu" or "cuda:N"); the messages
    between stages still cross the codecs, decoded straight onto that device.
    """

    model: str = "tiny"
    stages: int = 1
    replicas: int = 1
    micro_batches: int = 1
    batch: int = 8
    steps: int = 10
    fwd: str = "q3"
    bwd: str = "q6"
    grad: str = "q4"
    fwd_delta: bool = False
    schedule: str = "1f1b"
    seed: int = 0
    data: str | None = None
    layers: list[int] | None = None
    lr: float = 3e-3
    warmup_steps: int = 0
    eval_every: int = 0
    train_samples: int | None = None
    eval_samples: int | None = 128
    seq_len: int | None = None
    device: str = "cpu"

    def check(self) -> tuple[models.GPTConfig, list[int]]:
        """Validate every field before any work; each error names the flag to fix."""
        try:
            config = models.get_config(self.model)
        except ValueError as error:
            raise ValueError(f"--model: {error}") from None
        for flag, value in (("--stages", self.stages), ("--replicas", self.replicas),
                            ("--micro-batches", self.micro_batches), ("--batch", self.batch), ("--steps", self.steps)):
            if value <= 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        if self.layers is None:
            if self.stages > config.layers:
                raise ValueError(f"--stages {self.stages} is more than model {config.name!r}'s {config.layers} "
                                 f"layers: every stage needs at least one layer")
            layers = models.even_layers(config.layers, self.stages)
        else:
            layers = list(self.layers)
            if len(layers) != self.stages:
                raise ValueError(f"--layers lists {len(layers)} stages but --stages is {self.stages}")
            try:
                models.check_layers(config, layers)
            except ValueError as error:
                raise ValueError(f"--layers: {error}") from None
        if self.batch % self.replicas:
            raise ValueError(f"--batch {self.batch} does not divide among --replicas {self.replicas}")
        if (self.batch // self.replicas) % self.micro_batches:
            raise ValueError(f"--micro-batches {self.micro_batches} does not divide the per-replica batch of "
                             f"{self.batch // self.replicas} sequences (--batch {self.batch} / --replicas {self.replicas})")
        if self.seq_len is not None and not 0 < self.seq_len <= config.context:
            raise ValueError(f"--seq-len must be in 1..{config.context} for model {config.name!r}, got {self.seq_len}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        for flag, value in (("--eval-every", self.eval_every), ("--warmup-steps", self.warmup_steps)):
            if value < 0:
                raise ValueError(f"{flag} must be zero or positive, got {value}")
        for flag, value in (("--train-samples", self.train_samples), ("--eval-samples", self.eval_samples)):
            if value is not None and value <= 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        get_schedule(self.schedule)
        self.codecs().check()
        check_device(self.device)
        return config, layers

    def codecs(self) -> ChannelCodecs:
        """The channel codecs of `--fwd`, `--bwd`, `--grad` and `--fwd-delta`."""
        return ChannelCodecs(self.fwd, self.bwd, self.grad, self.fwd_delta)


def worker_name(stage: int, replica: int) -> str:
    """Transport name of a grid position: stage 1 of replica 0 is "s1r0"."""
    return f"s{stage}r{replica}"


class LocalGrid:
    """S x R stage workers over one in-process hub, stepped together, evaluated on replica 0."""

    def __init__(self, config: LocalConfig, dataset: models.SequenceDataset | None = None) -> None:
        self.model_config, self.layers = config.check()
        self.config = config
        self.dataset = dataset if dataset is not None else load_dataset(config, self.model_config)
        if config.batch > self.dataset.train_ids.numel():
            raise ValueError(f"--batch {config.batch} is larger than the training split "
                             f"({self.dataset.train_ids.numel()} sequences): lower --batch or raise --train-samples")
        stages, replicas = config.stages, config.replicas
        self.hub = InProcessHub()
        settings = OptimizerSettings(lr=config.lr, warmup_steps=config.warmup_steps)
        self.workers: list[list[StageExecutor]] = []
        for s in range(stages):
            group = [worker_name(s, r) for r in range(replicas)]
            row = []
            for r in range(replicas):
                module = models.build_stage(self.model_config, self.layers, s, seed=config.seed, device=config.device)
                row.append(StageExecutor(
                    module, stage_index=s, num_stages=stages, transport=self.hub.endpoint(worker_name(s, r)),
                    prev=worker_name(s - 1, r) if s > 0 else None,
                    next=worker_name(s + 1, r) if s < stages - 1 else None,
                    group=group, codecs=config.codecs(), schedule=config.schedule,
                    micro_batches=config.micro_batches, optimizer=settings, seed=config.seed,
                    delta_capacity=self.dataset.size))
            self.workers.append(row)
        self._pool = ThreadPoolExecutor(max_workers=stages * replicas, thread_name_prefix="stage")

    def step(self, step: int) -> dict:
        """One synchronous training step of the whole grid; returns its report entry."""
        started = time.perf_counter()
        shares = self.dataset.train_batch(step, self.config.batch, self.config.seed).chunk(self.config.replicas)
        futures = {self._pool.submit(worker.run_step, step, shares[r]): (s, r)
                   for s, row in enumerate(self.workers) for r, worker in enumerate(row)}
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [future for future in done if future.exception() is not None]
        if failed:
            self.hub.close("step aborted: another worker failed")  # wake every blocked receive
            wait(pending)
            raise failed[0].exception()
        results = {futures[future]: future.result() for future in done}
        stats = ChannelStats()
        for key in sorted(results):
            stats.merge(results[key].stats)
        last = self.config.stages - 1
        loss = sum(results[(last, r)].loss for r in range(self.config.replicas)) / self.config.replicas
        seconds = time.perf_counter() - started
        tokens = sum(results[(0, r)].tokens for r in range(self.config.replicas))
        return {"step": step, "loss": loss, "tokens_per_s": tokens / seconds, "seconds": seconds,
                "bytes": dict(stats.bytes), "values": dict(stats.values)}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean held-out loss of replica 0's model (parameters only: no codecs on this path)."""
        stages = [worker.stage for worker in (row[0] for row in self.workers)]
        total, count = 0.0, 0
        for batch in self.dataset.eval_batches(max(1, self.config.batch)):
            hidden = batch.inputs.to(self.config.device)
            for stage in stages:
                hidden = stage(hidden)
            total += stages[-1].loss(hidden, batch.targets.to(self.config.device)).item() * len(batch)
            count += len(batch)
        return total / count

    def checksum(self, replica: int = 0) -> str:
        """sha256 of every stage's parameters of one pipeline replica."""
        return models.param_checksum(row[replica].stage for row in self.workers)

    def replicas_identical(self) -> bool:
        """Whether every stage's replicas hold bit-identical parameters (they must, after each step)."""
        return all(len({worker.param_checksum() for worker in row}) == 1 for row in self.workers)

    def stage_modules(self, replica: int = 0) -> list[torch.nn.Module]:
        """The stage modules of one pipeline replica, stage 0 first."""
        return [row[replica].stage for row in self.workers]

    def close(self) -> None:
        """Wake any blocked worker and stop the worker threads."""
        self.hub.close("grid closed")
        self._pool.shutdown(wait=True)


def load_dataset(config: LocalConfig, model_config: models.GPTConfig) -> models.SequenceDataset:
    """The corpus of `--data` (or the bundled King James Bible) cut into model-length sequences."""
    try:
        path = config.data if config.data is not None else models.default_corpus_path()
        data = models.read_corpus(path)
        return models.SequenceDataset(data, config.seq_len or model_config.context,
                                      max_train=config.train_samples, max_eval=config.eval_samples)
    except (OSError, ValueError) as error:
        raise ValueError(f"--data: {error}") from None


def run_local(config: LocalConfig, on_step: Callable[[dict], None] | None = None) -> dict:
    """Train the grid for `config.steps` steps; returns the `swarm-sim local` report."""
    grid = LocalGrid(config)
    try:
        steps, evals = [], []
        for step in range(1, config.steps + 1):
            entry = grid.step(step)
            steps.append(entry)
            if step == config.steps or (config.eval_every and step % config.eval_every == 0):
                evals.append({"step": step, "loss": grid.evaluate()})
                entry["eval_loss"] = evals[-1]["loss"]
            if on_step is not None:
                on_step(entry)
        totals = ChannelStats()
        for entry in steps:
            for channel in entry["bytes"]:
                totals.add(channel, entry["bytes"][channel], entry["values"][channel])
        return {
            "config": {**asdict(config), "layers": grid.layers, "parameters": models.count_parameters(grid.model_config)},
            "steps": steps,
            "eval": evals,
            "bits_per_value": totals.bits_per_value(),
            # With --fwd-delta the first visit of each sample goes at full precision; the last
            # step shows the steady state.
            "bits_per_value_final_step": ChannelStats(steps[-1]["bytes"], steps[-1]["values"]).bits_per_value(),
            "bytes_total": dict(totals.bytes),
            "final": {"train_loss": steps[-1]["loss"], "eval_loss": evals[-1]["loss"],
                      "param_checksum": grid.checksum(), "replicas_identical": grid.replicas_identical()},
        }
    finally:
        grid.close()
