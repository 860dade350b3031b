"""The GPU path measured on one device, as JSON: codecs, a bf16 stage, a 4-peer swarm, the CUDA tests.

    python bench/gpu.py                        # on a CUDA machine: everything, a few minutes
    python bench/gpu.py --device cpu --quick   # the same script on a CPU, small sizes (a smoke run)

1. q3 / q4 / q6 encode and decode GB/s on a `--size-mb` fp32 tensor, against a device-to-device
   copy into a preallocated buffer in the same run (medians of `--repeats`).
2. tokens/s of one `gpt2-xl` stage (`--stage-layers` of its 48 layers) forward + backward under
   bf16 autocast, at micro-batch 1 and 4.
3. a live swarm of 4 peers sharing the device (`--device` on each) training `small` (`tiny` with
   `--quick`) for `--steps` steps, 2 stages x 2 replicas: tokens/s and whether the replicas'
   checksums agreed at every step.
4. the suite's CUDA tests (`pytest -k cuda`), their pass/fail counts.
The JSON names the device, so its output can go into the README as it is.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import compression
import models
from swarm.launcher import LocalSwarm

CODECS = ("q3", "q4", "q6")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="cuda:0", help="cuda:N or cpu [default: %(default)s]")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the whole script")
    parser.add_argument("--size-mb", type=float, help="codec tensor size [default: 256, 16 with --quick]")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per figure [default: %(default)s]")
    parser.add_argument("--stage-layers", type=int, default=6, help="gpt2-xl layers in the timed stage")
    parser.add_argument("--steps", type=int, default=30, help="steps of the live swarm [default: %(default)s]")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda:N needs a CUDA device visible to torch; use --device cpu for a smoke run")
    size_mb = args.size_mb or (16.0 if args.quick else 256.0)
    report: dict[str, Any] = {"device": _device_name(device), "torch": torch.__version__, "quick": args.quick}
    report["codecs"] = _codecs(device, size_mb, args.repeats)
    report["stage"] = _stage(device, 1 if args.quick else args.stage_layers, quick=args.quick)
    report["swarm"] = _swarm(args.device, "tiny" if args.quick else "small", 6 if args.quick else args.steps)
    report["cuda_tests"] = _cuda_tests() if device.type == "cuda" else None
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


def _codecs(device: torch.device, size_mb: float, repeats: int) -> dict[str, Any]:
    numel = int(size_mb * 2**20) // 4
    x = torch.randn(numel, device=device, generator=torch.Generator(device).manual_seed(0))
    out = torch.empty_like(x)
    copy = _gbps(lambda: out.copy_(x), numel, repeats, device)
    result: dict[str, Any] = {"tensor_mb": size_mb, "copy_gbps": copy}
    for codec in CODECS:
        frame = compression.encode(x, codec, seed=0)  # first call compiles (Triton on CUDA)
        encode = _gbps(lambda codec=codec: compression.encode(x, codec, seed=1), numel, repeats, device)
        decode = _gbps(lambda frame=frame: compression.decode(frame, out=out), numel, repeats, device)
        cpu_view = compression.decode(frame)  # the same frame read on the CPU
        result[codec] = {"encode_gbps": encode, "decode_gbps": decode, "encode_vs_copy": encode / copy,
                         "decode_vs_copy": decode / copy,
                         "cpu_decode_matches": bool(torch.equal(cpu_view, out.cpu()))}
    return result


def _stage(device: torch.device, layers: int, *, quick: bool) -> dict[str, Any]:
    config = models.get_config("tiny" if quick else "gpt2-xl")
    layers = min(layers, config.layers - 1)
    split = [layers, config.layers - layers]
    stage = models.build_stage(config, split, 1, device=device)  # a middle-or-last stage: takes activations
    result: dict[str, Any] = {"model": config.name, "layers": layers}
    for micro in (1, 4):
        x = torch.randn(micro, config.context, config.d_model, device=device, requires_grad=True)

        def step(x: torch.Tensor = x) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = stage(x)
            out.float().square().mean().backward()

        seconds = _median_seconds(step, 3, device)
        result[f"micro_batch_{micro}"] = {"tokens_per_s": micro * config.context / seconds, "seconds": seconds}
    return result


def _swarm(device: str, model: str, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="swarm-gpu-") as tmp, LocalSwarm(Path(tmp), fused=device != "cpu") as swarm:
        swarm.start_coordinator(["--model", model, "--steps", str(steps), "--batch", "8", "--micro-batches", "2",
                                 "--stages", "2", "--replicas", "2", "--checkpoint-every", str(steps)])
        for name in ("p1", "p2", "p3", "p4"):
            swarm.start_peer(name, ["--device", device])
        code = swarm.wait_exit("coordinator", 900)
        report = swarm.report()
    timed = [s["tokens_per_s"] for s in report.get("steps", [])[2:]]
    return {"model": model, "steps": steps, "exit_code": code,
            "tokens_per_s_median": statistics.median(timed) if timed else None,
            "replicas_agree_every_step": not report.get("mismatches") and bool(report.get("checksums")),
            "final_loss": report["steps"][-1]["loss"] if report.get("steps") else None}


def _cuda_tests() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests"],
                          capture_output=True, text=True, check=False)
    return {"exit_code": done.returncode, "summary": done.stdout.strip().splitlines()[-1:]}


def _gbps(call: Callable[[], object], numel: int, repeats: int, device: torch.device) -> float:
    return numel * 4 / _median_seconds(call, repeats, device) / 1e9


def _median_seconds(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    call()  # warm-up: allocation, compilation
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":
    sys.exit(main())
