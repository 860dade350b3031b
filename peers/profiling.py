"""Measure what a volunteer brings: compute speed (TFLOPS on its device), memory, codec speed.

The scheduler places layers by device speed and memory, so the numbers are measured, not
declared. At start-up a short matrix-multiply burst gives a first figure (`measure_device`);
once the peer knows what the swarm trains, it times the model itself (`measure_model`): one
transformer block's forward and backward at the swarm's shapes. Training runs those small
kernels with Python between them, which on `tiny` reaches about 0.64x of what a 512 x 512 matmul
burst does, so the cost model fed matmul speeds predicts steps too short. The codecs run on the
same device and every message pays them at both ends, so their speed is measured too
(`measure_codec`), once the codec kernels are compiled.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import compression
from models import BACKWARD_FLOPS_FACTOR, Block, GPTConfig, layer_forward_flops_per_token

__all__ = ["DeviceProfile", "measure_device", "measure_model", "measure_codec", "check_device"]


@dataclass(frozen=True)
class DeviceProfile:
    """device: as given to torch; tflops: measured dense matmul speed (before the model is known);
    memory_gb: usable memory."""

    device: str
    tflops: float
    memory_gb: float


def check_device(device: str) -> str:
    """`device` if torch can use it here, else ValueError naming `--device` and what to do."""
    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch build sees no CUDA GPU; use --device cpu "
                         "or install a CUDA build of torch")
    try:
        index = torch.device(device).index or 0
    except RuntimeError:
        raise ValueError(f"--device: malformed CUDA device {device!r}; write it as cuda:0") from None
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def measure_device(device: str = "cpu", size: int = 512, seconds: float = 0.3, tries: int = 3) -> DeviceProfile:
    """Time `size` x `size` matmuls for about `seconds`, `tries` times, and report the best sustained TFLOPS
    (a burst the neighbours' processes preempted says little about the device; each burst spans several
    scheduler periods, so a CPU quota still shows)."""
    device = check_device(device)
    dtype = torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: kernel selection, page faults
    _sync(device)

    def four_products() -> None:  # enough work per call that a GPU's synchronisation does not dominate
        for _ in range(4):
            torch.mm(a, b)

    tflops = max(_burst(four_products, 4 * 2 * size**3, device, seconds) for _ in range(tries))
    return DeviceProfile(device=device, tflops=_announced(tflops), memory_gb=round(_memory_gb(device), 2))


def measure_model(config: GPTConfig, sequences: int, device: str = "cpu", dtype: str = "fp32",
                  seconds: float = 0.3, tries: int = 3) -> float:
    """TFLOPS of one transformer block of `config`: forward and backward on `sequences` sequences of
    the full context, under bf16 autocast when `dtype` is "bf16", as a stage computes them. The best
    of `tries` bursts of about `seconds` (at least one pass each), like `measure_device`. FLOPs are
    counted as `models.stages` counts them (backward = BACKWARD_FLOPS_FACTOR x forward)."""
    device = check_device(device)
    target = torch.device(device)
    block = Block(config).to(target)
    x = torch.randn(sequences, config.context, config.d_model, device=target, requires_grad=True)
    flops = (1.0 + BACKWARD_FLOPS_FACTOR) * layer_forward_flops_per_token(config) * sequences * config.context

    def forward_backward() -> None:
        with torch.autocast(target.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = block(x)
        out.float().sum().backward()

    forward_backward()  # warm-up: allocations, kernel selection
    _sync(device)
    return _announced(max(_burst(forward_backward, flops, device, seconds) for _ in range(tries)))


def measure_codec(codec: str, device: str = "cpu", values: int = 2**20, runs: int = 5) -> float:
    """Billions of values per second through one pass of `codec` (an encode or a decode) on `device`.

    Times an encode and a decode of `values` random fp32 values, the median of `runs` after one
    untimed round (call it after `compression.warm_up`, or that round compiles); each value is
    one encode and one decode, so the rate is 2 x values / seconds. About a second on a CPU core.
    """
    sample = torch.randn(values, device=device)
    target = torch.device(device)
    seconds = []
    for run in range(runs + 1):
        started = time.perf_counter()
        compression.decode(compression.encode(sample, codec, seed=run), device=target)
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return max(round(2 * values / statistics.median(seconds[1:]) / 1e9, 4), 1e-4)  # a record's rate is positive


def _burst(work: Callable[[], None], flops: float, device: str, seconds: float) -> float:
    """TFLOPS of back-to-back calls of `work` (`flops` each) for about `seconds`, at least one call."""
    runs = 0
    start = time.perf_counter()
    while True:
        work()
        runs += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return flops * runs / elapsed / 1e12


def _announced(tflops: float) -> float:
    """`tflops` as a record announces it: rounded, and never 0.0 (records require a positive speed)."""
    return max(round(tflops, 4), 1e-4)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(device)
        return free / 2**30
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
