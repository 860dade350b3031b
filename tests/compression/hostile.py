"""Hand-built hostile frames (no encoder involved) and a subprocess that decodes them and reports
peak memory. Also run by hand: `python -m tests.compression.hostile` prints one JSON line per frame.

The frames are the review's findings and their relatives: a 32 KB `cocktail@64,0.000001` frame
that used to decode to 64 MB, the same codec at 16 MiB (a 34 GB claim that raised RuntimeError
after 1.1 GB of temporaries), and 16 MiB frames of allowed codecs corrupted where the decoder
only finds out late (a cocktail mask selecting one value too many, a NaN in q1's last block scale,
an out-of-range q8 exponent).
"""
from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20


def frame(spec: str, shape: tuple[int, ...], payload_size: int, dtype_code: int = 0) -> tuple[bytearray, int]:
    """A zero payload of `payload_size` bytes behind a valid header; returns it and the payload offset."""
    raw = spec.encode()
    head = struct.pack("<4sBBBB", b"SWCF", 1, dtype_code, len(shape), len(raw)) + raw
    head += struct.pack(f"<{len(shape)}Q", *shape)
    head += bytes(-len(head) % 8)
    buf = bytearray(len(head) + payload_size)
    buf[:len(head)] = head
    return buf, len(head)


def cocktail(stride: int, keep: float, sampled: int, spec: str, extra_bits: int = 0) -> bytearray:
    """A cocktail frame of `sampled` samples whose mask selects the kept count (+ `extra_bits`)."""
    kept = min(sampled, -(-int(round(keep * sampled * 1e6)) // 1_000_000))
    values = 4 + 4 * -(-kept // 128) + -(-kept * 4 // 8)
    buf, at = frame(spec, (stride * sampled,), 4 + -(-sampled // 8) + values)
    mask_at, ones = at + 4 + values, kept + extra_bits
    buf[mask_at:mask_at + ones // 8] = b"\xff" * (ones // 8)
    if ones % 8:
        buf[mask_at + ones // 8] = (1 << (ones % 8)) - 1
    return buf


def quantized(bits: int, block: int, numel: int, nan_scale: bool = False, exponent: int = 0) -> bytearray:
    nb = -(-numel // block)
    spec = f"q{bits}" + ("" if block == 256 else f"@{block}")
    buf, at = frame(spec, (numel,), 4 + 4 * nb + -(-numel * bits // 8))
    struct.pack_into("<i", buf, at, exponent)
    if nan_scale:
        struct.pack_into("<H", buf, at + 4 + 4 * (nb - 1) + 2, 0x7E00)
    return buf


def build(name: str) -> bytes:
    if name == "cocktail@64,0.000001 32 KB":
        return bytes(cocktail(64, 1e-6, 1 << 18, "cocktail@64,0.000001"))  # claims 64 MB
    if name == "cocktail@64,0.000001 16 MiB":
        return bytes(cocktail(64, 1e-6, 1 << 27, "cocktail@64,0.000001"))  # claims 32 GiB
    if name == "cocktail 16 MiB, one mask bit too many":
        return bytes(cocktail(10, 0.25, 65 << 20, "cocktail", extra_bits=1))  # claims 2.6 GB
    if name == "q1@65536 16 MiB, NaN scale in the last block":
        return bytes(quantized(1, 65536, 127 * MIB, nan_scale=True))  # claims 508 MiB
    if name == "q8 16 MiB, exponent out of range":
        return bytes(quantized(8, 256, 16 * MIB - 65536, exponent=1 << 20))
    raise KeyError(name)


NAMES = ["cocktail@64,0.000001 32 KB", "cocktail@64,0.000001 16 MiB", "cocktail 16 MiB, one mask bit too many",
         "q1@65536 16 MiB, NaN scale in the last block", "q8 16 MiB, exponent out of range"]


def measure() -> list[dict[str, object]]:
    """Decode every hostile frame in this process: outcome and peak RSS growth (MiB) over the lot.

    All frames are built first and a small frame of each codec is decoded once (thread pools, lazy
    imports), so the growth is what decoding the hostile frames cost.
    """
    import torch

    import compression

    compression.set_fused(False)
    frames = {name: build(name) for name in NAMES}
    for codec in ("cocktail", "q1", "q8"):
        compression.decode(compression.encode(torch.randn(100_000), codec, seed=0))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results: list[dict[str, object]] = []
    for name, data in frames.items():
        try:
            compression.decode(data)
            error = None
        except Exception as caught:  # what escaped is the measurement
            error = f"{type(caught).__name__}: {caught}"
        results.append({"frame": name, "bytes": len(data), "error": error})
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # Linux: KiB
    return [*results, {"peak_rss_growth_mib": round(growth, 1)}]


def measure_in_subprocess() -> list[dict[str, object]]:
    """`measure()` in a fresh interpreter, so this process's own memory does not blur it."""
    done = subprocess.run([sys.executable, "-m", "tests.compression.hostile"], cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=240, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


if __name__ == "__main__":
    for line in measure():
        print(json.dumps(line))
