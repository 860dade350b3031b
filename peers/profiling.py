"""Measure what a volunteer brings: compute speed (TFLOPS on its device), memory, codec speed.

The scheduler places layers by device speed and memory, so the numbers are measured, not
declared. At start-up a short matrix-multiply burst gives a first figure (`measure_device`).
Training runs a model's small kernels with Python between them, which on `tiny` reaches about
0.6x of what a 512 x 512 matmul burst does, so a cost model fed matmul speeds predicts steps too
short: once the peer knows what the swarm trains, it announces the matmul speed times the
model's efficiency on this device (`model_efficiency`: a transformer block's forward and backward
at the swarm's shapes, timed call for call against matmuls). The codecs run on the same device and every
message pays them at both ends, so their speed is measured too (`measure_codec`), once the codec
kernels are compiled.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

import compression
from models import BACKWARD_FLOPS_FACTOR, Block, GPTConfig, layer_forward_flops_per_token

__all__ = ["DeviceProfile", "measure_device", "declared_device", "model_efficiency", "device_name", "measure_codec",
           "check_device", "announced"]


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
    products, flops = _matmul_work(device, size)
    tflops = max(_burst(products, flops, device, seconds) for _ in range(tries))
    return declared_device(device, announced(tflops))


def declared_device(device: str, tflops: float) -> DeviceProfile:
    """A profile of `device` whose speed is given, not measured (`swarm-peer join --tflops`)."""
    device = check_device(device)
    return DeviceProfile(device=device, tflops=tflops, memory_gb=round(_memory_gb(device), 2))


def model_efficiency(config: GPTConfig, sequences: int, device: str = "cpu", dtype: str = "fp32",
                     seconds: float = 0.6, rounds: int = 3) -> float:
    """How fast one transformer block of `config` runs relative to a matmul burst on `device`: forward
    and backward on `sequences` sequences of the full context (under bf16 autocast when `dtype` is
    "bf16"), as a stage computes it, with FLOPs counted as `models.stages` counts them.

    The block alone swings with what else runs on the machine, so it is timed against matmuls, call
    for call: rounds of one block pass then one matmul call (each some milliseconds), for about
    `seconds` and at least `rounds` rounds. A neighbour that takes the CPU for a while slows the calls
    of both kinds alike, and the ratio of their summed speeds stays. The model's TFLOPS are then
    `measure_device`'s times this.
    """
    device = check_device(device)
    products, product_flops = _matmul_work(device)
    forward_backward, block_flops = _block_work(config, sequences, device, dtype)
    block_s = product_s = 0.0
    done = 0
    started = time.perf_counter()
    while done < rounds or time.perf_counter() - started < seconds:
        block_s += _timed(forward_backward, device)
        product_s += _timed(products, device)
        done += 1
    return (block_flops / block_s) / (product_flops / product_s)


def device_name(device: str) -> str:
    """What the hardware behind `device` is called (the CPU's model name, or the GPU's)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "cpu")
    except OSError:
        return platform.processor() or "cpu"


def measure_codec(codec: str, device: str = "cpu", values: int = 2**20, runs: int = 5) -> float:
    """Billions of values per second through one pass of `codec` (an encode or a decode) on `device`.

    Times an encode and a decode of `values` random fp32 values, the median of `runs` after one
    untimed round (call it after `compression.warm_up`, or that round compiles); each value is
    one encode and one decode, so the rate is 2 x values / seconds. About a second on a CPU core.
    """
    sample = torch.randn(values, device=device)
    target = torch.device(device)

    def round_trip(run: int) -> None:
        compression.decode(compression.encode(sample, codec, seed=run), device=target)

    seconds = [_timed(partial(round_trip, run), device) for run in range(runs + 1)]
    return announced(2 * values / statistics.median(seconds[1:]) / 1e9)


def announced(rate: float) -> float:
    """A measured rate (TFLOPS, Gvalues/s) as a peer record announces it: rounded to 4 places, and never
    0.0 (records require positive rates, see `PeerRecord.from_wire`)."""
    return max(round(rate, 4), 1e-4)


def _matmul_work(device: str, size: int = 512) -> tuple[Callable[[], None], float]:
    """Four `size` x `size` fp32 matmuls a call (enough work that a GPU's synchronisation does not
    dominate), warmed up, and their FLOPs."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up: kernel selection, page faults
    _sync(device)

    def four_products() -> None:
        for _ in range(4):
            torch.mm(a, b)

    return four_products, 4 * 2.0 * size**3


def _block_work(config: GPTConfig, sequences: int, device: str, dtype: str) -> tuple[Callable[[], None], float]:
    """A transformer block's forward and backward a call, warmed up, and its FLOPs."""
    target = torch.device(device)
    block = Block(config).to(target)
    x = torch.randn(sequences, config.context, config.d_model, device=target, requires_grad=True)

    def forward_backward() -> None:
        with torch.autocast(target.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = block(x)
        out.float().sum().backward()

    forward_backward()  # warm-up: allocations, kernel selection
    _sync(device)
    tokens = sequences * config.context
    return forward_backward, (1.0 + BACKWARD_FLOPS_FACTOR) * layer_forward_flops_per_token(config) * tokens


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


def _timed(work: Callable[[], None], device: str) -> float:
    """Seconds one call of `work` takes, its device work included."""
    started = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - started


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(device)
        return free / 2**30
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
