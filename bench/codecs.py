"""Codec throughput on a 64 MB fp32 tensor, against `copy_` and hivemind's 8-bit codec, as JSON.

    python bench/codecs.py                     # 1 thread and all threads, q3 q4 q6 fp16
    python bench/codecs.py --size-mb 16 --repeats 5 --threads 1

GB/s counts the fp32 input bytes. Every figure is the median of `--repeats` rounds, and the
rounds interleave all contenders, so load from other processes hits them alike; the ratios
(`*_vs_copy`, `*_vs_hivemind`) compare numbers from the same run. Decode writes into a reused
output buffer, as a receiver does (a fresh 64 MB allocation alone costs page faults at ~3 GB/s).
The first call of each codec (which compiles its kernels) is timed separately as `first_call_s`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import torch
from rich.progress import Progress

import compression

DEFAULT_CODECS = ["q3", "q4", "q6", "fp16"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--size-mb", type=float, default=64.0, help="fp32 tensor size in MB (default 64)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per figure (default 9)")
    parser.add_argument("--threads", default="1,all", help="comma list of thread counts or 'all' (default 1,all)")
    parser.add_argument("--codecs", default=",".join(DEFAULT_CODECS), help="comma list of codec specs")
    args = parser.parse_args(argv)
    if args.size_mb <= 0 or args.repeats < 1:
        parser.error("--size-mb must be > 0 and --repeats >= 1")
    try:
        threads = [torch.get_num_threads() if t == "all" else int(t) for t in args.threads.split(",")]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        parser.error(f"--threads takes positive integers or 'all', got {args.threads!r}")
    codecs = [c for c in args.codecs.split(",") if c]
    for codec in codecs:
        try:
            compression.encode(torch.zeros(8), codec)
        except compression.CodecError as error:
            parser.error(f"--codecs: {error}")

    numel = int(args.size_mb * 2**20) // 4
    x = torch.randn(numel, generator=torch.Generator().manual_seed(0))
    report = {"tensor_mb": round(numel * 4 / 2**20, 3), "repeats": args.repeats,
              "torch": torch.__version__, "threads": {}}
    with Progress(transient=True, console=_stderr_console()) as progress:
        for count in threads:
            torch.set_num_threads(count)
            report["threads"][str(count)] = _measure(x, codecs, args.repeats, progress, count)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


def _measure(x: torch.Tensor, codecs: list[str], repeats: int, progress: Progress, threads: int) -> dict:
    out = torch.empty_like(x)
    frames = {}
    first_call = {}
    for codec in codecs:  # first calls compile; time them apart from the steady state
        start = time.perf_counter()
        frames[codec] = compression.encode(x, codec)
        compression.decode(frames[codec], out=out)
        first_call[codec] = round(time.perf_counter() - start, 3)
    contenders: dict[str, Callable[[], object]] = {"copy": lambda: out.copy_(x)}
    contenders.update(_hivemind_contenders(x))
    for codec in codecs:
        contenders[f"{codec}.encode"] = lambda codec=codec: compression.encode(x, codec)
        contenders[f"{codec}.decode"] = lambda codec=codec: compression.decode(frames[codec], out=out)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    task = progress.add_task(f"{threads} thread(s)", total=repeats * len(contenders))
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            progress.advance(task)
    gbps = {name: x.numel() * 4 / statistics.median(t) / 1e9 for name, t in times.items()}
    result = {"copy_gbps": round(gbps["copy"], 3)}
    hive = {}
    if "hivemind.compress" in gbps:
        hive = {"compress_gbps": round(gbps["hivemind.compress"], 3),
                "extract_gbps": round(gbps["hivemind.extract"], 3)}
        result["hivemind_uint8"] = hive
    result["codecs"] = {}
    for codec in codecs:
        enc, dec = gbps[f"{codec}.encode"], gbps[f"{codec}.decode"]
        entry = {"encode_gbps": round(enc, 3), "decode_gbps": round(dec, 3),
                 "bits_per_value": round(8 * len(frames[codec]) / x.numel(), 4),
                 "encode_vs_copy": round(enc / gbps["copy"], 3), "decode_vs_copy": round(dec / gbps["copy"], 3),
                 "first_call_s": first_call[codec]}
        if hive:
            entry["encode_vs_hivemind"] = round(enc / gbps["hivemind.compress"], 2)
            entry["decode_vs_hivemind"] = round(dec / gbps["hivemind.extract"], 2)
        result["codecs"][codec] = entry
    if "q4" in result["codecs"] and hive:
        q4 = result["codecs"]["q4"]
        result["q4_goal_met"] = (min(q4["encode_vs_hivemind"], q4["decode_vs_hivemind"]) >= 2
                                 and min(q4["encode_vs_copy"], q4["decode_vs_copy"]) >= 0.25)
    return result


def _hivemind_contenders(x: torch.Tensor) -> dict[str, Callable[[], object]]:
    try:
        from hivemind.compression import CompressionInfo, Uniform8BitQuantization
    except ImportError as error:  # the benchmark still reports our codecs
        print(f"hivemind unavailable ({error}); skipping its baseline", file=sys.stderr)
        return {}
    codec = Uniform8BitQuantization()
    info = CompressionInfo.from_tensor(x)
    try:  # hivemind 1.1.12's 8-bit extract raises with numpy >= 2.4
        serialized = codec.compress(x, info)
        codec.extract(serialized)
    except Exception as error:
        print(f"hivemind's 8-bit codec fails here ({type(error).__name__}: {error}); skipping its baseline",
              file=sys.stderr)
        return {}
    return {"hivemind.compress": lambda: codec.compress(x, info),
            "hivemind.extract": lambda: codec.extract(serialized)}


def _stderr_console():
    from rich.console import Console
    return Console(stderr=True)


if __name__ == "__main__":
    sys.exit(main())
