"""Measure what a volunteer brings: compute speed (TFLOPS on its device), memory, codec speed.

The scheduler places layers by device speed and memory, so the numbers are measured, not
declared: a short matrix-multiply burst in the dtype training will use, timed after a warm-up.
The codecs run on the same device and every message pays them at both ends, so their speed is
measured too (`measure_codec`), once the codec kernels are compiled.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

import compression

__all__ = ["DeviceProfile", "measure_device", "measure_codec", "check_device"]


@dataclass(frozen=True)
class DeviceProfile:
    """device: as given to torch; tflops: measured dense matmul speed; memory_gb: usable memory."""

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
    tflops = max(_burst(a, b, device, seconds) for _ in range(tries))
    # never 0.0 after rounding: peer records must announce a positive speed (see PeerRecord.from_wire)
    return DeviceProfile(device=device, tflops=max(round(tflops, 4), 1e-4), memory_gb=round(_memory_gb(device), 2))


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


def _burst(a: torch.Tensor, b: torch.Tensor, device: str, seconds: float) -> float:
    """TFLOPS of back-to-back a @ b for about `seconds`."""
    runs = 0
    start = time.perf_counter()
    while True:
        torch.mm(a, b)
        runs += 1
        if runs % 4 == 0:
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2 * a.shape[0] ** 3 * runs / elapsed / 1e12


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(device)
        return free / 2**30
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
