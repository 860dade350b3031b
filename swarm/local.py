"""A whole S x R training grid in one process: the pipeline engine proven before the network is.

Every (stage, replica) is a real `StageExecutor` on its own thread, wired through an in-process
`InProcessHub`, so the messages, codecs, schedules and all-reduce are exactly those of the live
swarm - only the transport differs. Results are deterministic: reductions run in fixed order and
stochastic rounding is seeded per message, so thread timing never changes a number.

    report = run_local(LocalConfig(TrainingSpec(batch=8, micro_batches=2, steps=50), stages=4, replicas=2))
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import torch

import models
from peers.attack import Attack
from peers.dataplane.transport import InProcessHub
from peers.pipeline import ChannelStats, OptimizerSettings, StageExecutor, StepResult, get_schedule
from peers.profiling import check_device
from peers.protocol import Codecs, TrainingSpec, to_builtins
from swarm.flags import check_codecs, check_training

__all__ = ["LocalConfig", "LocalGrid", "run_local", "worker_name"]


@dataclass
class LocalConfig:
    """Everything `swarm-sim local` takes: the run's `TrainingSpec` and `Codecs` (the same as a live
    swarm's) plus the grid and what only the simulator has.

    layers: layers per stage (default: as even as possible). train_samples / eval_samples: keep
    only the first sequences of each split (a fine-tuning-sized subset where samples repeat, as
    AQ-SGD needs). eval_every: steps between evaluations (0: only at the end). device: where every
    stage computes ("cpu" or "cuda:N"); the messages between stages still cross the codecs,
    decoded straight onto that device. attack: a fault injector (`--attack`, `peers.attack`) for
    the worker that is replica `attack.replica` of every stage; pair it with
    `training.aggregate` (`--aggregate`) to see what a rule survives.
    """

    training: TrainingSpec = field(default_factory=TrainingSpec)
    codecs: Codecs = field(default_factory=Codecs)
    stages: int = 1
    replicas: int = 1
    schedule: str = "1f1b"
    layers: list[int] | None = None
    eval_every: int = 0
    train_samples: int | None = None
    eval_samples: int | None = 128
    seq_len: int | None = None
    device: str = "cpu"
    attack: Attack | None = None

    def check(self) -> tuple[models.GPTConfig, list[int]]:
        """Validate every field before any work; each error names the flag to fix."""
        self.training = check_training(self.training)
        self.codecs = check_codecs(self.codecs)
        config = models.get_config(self.training.model)
        for flag, value in (("--stages", self.stages), ("--replicas", self.replicas)):
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
        self.training.check_grid(self.replicas)
        if self.attack is not None and self.attack.replica >= self.replicas:
            raise ValueError(f"--attack {self.attack} names replica {self.attack.replica}, but --replicas is "
                             f"{self.replicas} (replicas count from 0)")
        if self.seq_len is not None and not 0 < self.seq_len <= config.context:
            raise ValueError(f"--seq-len must be in 1..{config.context} for model {config.name!r}, got {self.seq_len}")
        if self.eval_every < 0:
            raise ValueError(f"--eval-every must be zero or positive, got {self.eval_every}")
        for flag, count in (("--train-samples", self.train_samples), ("--eval-samples", self.eval_samples)):
            if count is not None and count <= 0:
                raise ValueError(f"{flag} must be positive, got {count}")
        get_schedule(self.schedule)
        check_device(self.device)
        return config, layers


def worker_name(stage: int, replica: int) -> str:
    """Transport name of a grid position: stage 1 of replica 0 is "s1r0"."""
    return f"s{stage}r{replica}"


class LocalGrid:
    """S x R stage workers over one in-process hub, stepped together, evaluated on replica 0."""

    def __init__(self, config: LocalConfig, dataset: models.SequenceDataset | None = None) -> None:
        self.model_config, self.layers = config.check()
        self.config = config
        self.dataset = dataset if dataset is not None else load_dataset(config, self.model_config)
        training = config.training
        if training.batch > self.dataset.train_ids.numel():
            raise ValueError(f"--batch {training.batch} is larger than the training split "
                             f"({self.dataset.train_ids.numel()} sequences): lower --batch or raise --train-samples")
        stages, replicas = config.stages, config.replicas
        self.hub = InProcessHub()
        settings = OptimizerSettings(lr=training.lr, warmup_steps=training.warmup_steps)
        self.workers: list[list[StageExecutor]] = []
        for s in range(stages):
            group = [worker_name(s, r) for r in range(replicas)]
            row = []
            for r in range(replicas):
                module = models.build_stage(self.model_config, self.layers, s, seed=training.seed, device=config.device)
                row.append(StageExecutor(
                    module, stage_index=s, num_stages=stages, transport=self.hub.endpoint(worker_name(s, r)),
                    prev=worker_name(s - 1, r) if s > 0 else None,
                    next=worker_name(s + 1, r) if s < stages - 1 else None,
                    group=group, codecs=config.codecs, schedule=config.schedule,
                    micro_batches=training.micro_batches, optimizer=settings, seed=training.seed,
                    delta_capacity=self.dataset.size, compute_dtype=training.dtype,
                    aggregate=training.aggregate, attack=config.attack))
            self.workers.append(row)
        self._pool = ThreadPoolExecutor(max_workers=stages * replicas, thread_name_prefix="stage")

    def step(self, step: int) -> dict[str, Any]:
        """One synchronous training step of the whole grid; returns its report entry."""
        started = time.perf_counter()
        training = self.config.training
        shares = self.dataset.train_batch(step, training.batch, training.seed).chunk(self.config.replicas)
        futures = {self._pool.submit(worker.run_step, step, shares[r]): (s, r)
                   for s, row in enumerate(self.workers) for r, worker in enumerate(row)}
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [future for future in done if future.exception() is not None]
        if failed:
            self.hub.close("step aborted: another worker failed")  # wake every blocked receive
            wait(pending)
            error = failed[0].exception()
            assert error is not None
            raise error
        results = {futures[future]: future.result() for future in done}
        stats = ChannelStats()
        for key in sorted(results):
            stats.merge(results[key].stats)
        last = self.config.stages - 1
        loss = sum(_loss(results[(last, r)]) for r in range(self.config.replicas)) / self.config.replicas
        seconds = time.perf_counter() - started
        tokens = sum(results[(0, r)].tokens for r in range(self.config.replicas))
        return {"step": step, "loss": loss, "tokens_per_s": tokens / seconds, "seconds": seconds,
                "bytes": dict(stats.bytes), "values": dict(stats.values)}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean held-out loss of replica 0's model (parameters only: no codecs on this path)."""
        stages = [worker.stage for worker in (row[0] for row in self.workers)]
        total, count = 0.0, 0
        for batch in self.dataset.eval_batches(self.config.training.batch):
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

    def suspects(self) -> dict[str, int]:
        """Workers the all-reduce owners flagged (name -> flags, summed over the owners that saw them)."""
        total: Counter[str] = Counter()
        for row in self.workers:
            for worker in row:
                total.update(worker.averager.suspects)
        return dict(sorted(total.items()))

    def stage_modules(self, replica: int = 0) -> list[torch.nn.Module]:
        """The stage modules of one pipeline replica, stage 0 first."""
        return [row[replica].stage for row in self.workers]

    def close(self) -> None:
        """Wake any blocked worker and stop the worker threads."""
        self.hub.close("grid closed")
        self._pool.shutdown(wait=True)


def _loss(result: StepResult) -> float:
    """A last-stage result's loss (the last stage always computes one)."""
    assert result.loss is not None
    return result.loss


def load_dataset(config: LocalConfig, model_config: models.GPTConfig) -> models.SequenceDataset:
    """The corpus of `--data` (or the bundled King James Bible) cut into model-length sequences."""
    try:
        path = config.training.data or models.default_corpus_path()
        data = models.read_corpus(path)
        return models.SequenceDataset(data, config.seq_len or model_config.context,
                                      max_train=config.train_samples, max_eval=config.eval_samples)
    except (OSError, ValueError) as error:
        raise ValueError(f"--data: {error}") from None


def run_local(config: LocalConfig, on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the grid for `config.training.steps` steps; returns the `swarm-sim local` report."""
    grid = LocalGrid(config)
    try:
        steps, evals = [], []
        for step in range(1, config.training.steps + 1):
            entry = grid.step(step)
            steps.append(entry)
            if step == config.training.steps or (config.eval_every and step % config.eval_every == 0):
                evals.append({"step": step, "loss": grid.evaluate()})
                entry["eval_loss"] = evals[-1]["loss"]
            if on_step is not None:
                on_step(entry)
        totals = ChannelStats()
        for entry in steps:
            for channel in entry["bytes"]:
                totals.add(channel, entry["bytes"][channel], entry["values"][channel])
        return {
            "config": {"training": to_builtins(config.training), "codecs": to_builtins(config.codecs),
                       "stages": config.stages, "replicas": config.replicas, "schedule": config.schedule,
                       "layers": grid.layers, "seq_len": config.seq_len, "device": config.device,
                       "parameters": models.count_parameters(grid.model_config),
                       "attack": None if config.attack is None else str(config.attack)},
            "steps": steps,
            "eval": evals,
            "bits_per_value": totals.bits_per_value(),
            # With --fwd-delta the first visit of each sample goes at full precision; the last
            # step shows the steady state.
            "bits_per_value_final_step": ChannelStats(steps[-1]["bytes"], steps[-1]["values"]).bits_per_value(),
            "bytes_total": dict(totals.bytes),
            "final": {"train_loss": steps[-1]["loss"], "eval_loss": evals[-1]["loss"],
                      "param_checksum": grid.checksum(), "replicas_identical": grid.replicas_identical(),
                      "suspects": grid.suspects()},
        }
    finally:
        grid.close()
