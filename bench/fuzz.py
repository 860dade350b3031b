"""Fuzz every decoder that reads bytes from the network, and check only documented errors escape.

Targets: `compression.decode` (random bytes, random bytes behind a plausible header, mutated valid
frames of every codec, forged frames whose header is valid but whose payload is random, and frames
decoded with the receiver's `codec=`/`shape=`/`out=`), `ActivationDelta.decode` on mutated AQ-SGD
frames, `peers.dataplane.wire.unpack` (random, mutated and re-typed headers) and `peers.dataplane.wire.unpack_body`
with every body type (random, mutated, and the body's fields holding random values, some deeply
nested). Decoders may raise only CodecError (compression) or WireError (wire); what decodes must
match its header and stay within its codec's ratio cap. Prints one JSON object: cases and outcomes
per target, the slowest case, peak RSS, and every escape (first few with their input); exits 1 if
anything escaped, a case ran longer than --slow-s, or RSS grew by more than --max-rss-growth-mib.

    .venv/bin/python bench/fuzz.py [--cases 100000] [--seed 0] [--slow-s 2]
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import struct
import sys
import time
from collections import Counter, defaultdict
from typing import Any, Callable

import msgpack
import torch

import compression
from compression import ActivationDelta, CodecError, decode, describe, encode, resolve
from peers.dataplane import wire
from peers.dataplane.transport import Message

CODECS = ["none", "fp16", "bf16", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q1@8", "q4@128", "q3~",
          "q8~@64", "q2@65536", "cocktail", "cocktail@3,0.5", "cocktail@1,1", "cocktail@8,0.00001", "cocktail@42,1"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SPECS = [*CODECS, "cocktail@64,0.000001", "q9", "zip", "Q4", "q4@7", "none@1", "q" * 48, "\xff\xfe"]
BODY_TYPES = [wire.ReachRequestBody, wire.ReachResultBody, wire.StateRequestBody, wire.StateMetaBody,
              wire.StateErrorBody]
BODIES = [wire.ReachRequestBody(address="tcp://10.0.0.1:5555", timeout=2.5), wire.ReachResultBody(rtt=0.01),
          wire.StateRequestBody(stage=0, chunk=3, serial=9),
          wire.StateMetaBody(stage=2, serial=1, bytes=10, chunks=1, chunk_bytes=1024, sha256="ab" * 32),
          wire.StateErrorBody(error="not served here", retry=True)]
HEADER = [wire.WIRE_VERSION, "act", 3, 17, 2, "p1", [5, 6]]


class InvariantViolation(AssertionError):
    """A decode that succeeded but returned something its header does not describe."""


def mutate(rng: random.Random, data: bytes, frame_fields: bool = False) -> bytes:
    """1-4 of: bit flip, byte set, truncation, extension, insertion, deletion, and for compression
    frames header edits (dtype code, ndim, spec length, another spec, a shape dimension)."""
    out = bytearray(data)
    kinds = ["flip", "set", "truncate", "extend", "insert", "delete"]
    kinds += ["dtype", "ndim", "speclen", "spec", "dim", "dim"] if frame_fields else []
    for _ in range(rng.randint(1, 4)):
        kind, at = rng.choice(kinds), rng.randrange(max(len(out), 1))
        if kind == "flip" and out:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == "set" and out:
            out[at] = rng.randrange(256)
        elif kind == "truncate":
            del out[at:]
        elif kind == "extend":
            out += rng.randbytes(rng.randint(1, 24))
        elif kind == "insert":
            out[at:at] = rng.randbytes(rng.randint(1, 24))
        elif kind == "delete":
            del out[at:at + rng.randint(1, 64)]
        elif kind in ("dtype", "ndim", "speclen") and len(out) >= 8:
            out[{"dtype": 5, "ndim": 6, "speclen": 7}[kind]] = rng.choice([rng.randrange(256), rng.randrange(20)])
        elif kind == "spec" and len(out) >= 8:
            out = respec(out, rng.choice(SPECS))
        elif kind == "dim" and len(out) >= 8 and out[6]:
            offset = 8 + out[7] + 8 * rng.randrange(out[6])
            if offset + 8 <= len(out):
                value = rng.choice([0, 1, rng.randrange(4096), rng.getrandbits(64), 2**64 - 1, 1 << 40])
                struct.pack_into("<Q", out, offset, value)
    return bytes(out)


def respec(data: bytearray, spec: str) -> bytearray:
    old_len, ndim = data[7], data[6]
    body_at = 8 + old_len + 8 * ndim
    body_at += -body_at % 8
    if len(data) < body_at:
        return data
    raw = spec.encode("latin-1")
    head = bytes(data[:7]) + bytes([len(raw)]) + raw + bytes(data[8 + old_len:8 + old_len + 8 * ndim])
    return bytearray(head + bytes(-len(head) % 8) + data[body_at:])


def forge(rng: random.Random, codec: str) -> bytes:
    """A header exactly right for a random (dtype, shape) and a random payload of the right size;
    half the time structured deeper (cocktail: a mask with exactly the kept count; q: a valid
    exponent), so the codec's inner checks are reached too."""
    impl, dtype_code = resolve(codec), rng.randrange(3)
    shape = tuple(rng.randrange(41) for _ in range(rng.randrange(4)))
    numel = 1
    for size in shape:
        numel *= size
    size = impl.payload_size(numel, DTYPES[dtype_code])
    payload = bytearray(rng.randbytes(size))
    if rng.random() < 0.5 and numel and codec.startswith("cocktail"):
        sampled, kept = impl._counts(numel)  # type: ignore[attr-defined]
        struct.pack_into("<i", payload, 0, rng.randrange(min(impl.stride, numel)))  # type: ignore[attr-defined]
        mask_at = size - -(-sampled // 8)
        payload[mask_at:] = bytes(size - mask_at)
        for position in rng.sample(range(sampled), kept):
            payload[mask_at + position // 8] |= 1 << (position % 8)
        finite_stats(rng, payload, 4, -(-kept // 128))
    elif rng.random() < 0.5 and codec.startswith("q") and size >= 4:
        finite_stats(rng, payload, 0, -(-numel // impl.block))  # type: ignore[attr-defined]
    raw = impl.spec.encode()
    head = struct.pack("<4sBBBB", b"SWCF", 1, dtype_code, len(shape), len(raw)) + raw
    head += struct.pack(f"<{len(shape)}Q", *shape)
    return head + bytes(-len(head) % 8) + bytes(payload)


def finite_stats(rng: random.Random, payload: bytearray, at: int, blocks: int) -> None:
    """A block quantizer's exponent (mostly in range) and finite fp16 (offset, scale) pairs at `at`."""
    struct.pack_into("<i", payload, at, rng.choice([rng.randrange(-120, 121), rng.randrange(-130, 131)]))
    for block in range(blocks):
        struct.pack_into("<ee", payload, at + 4 + 4 * block, rng.uniform(-4, 4), rng.uniform(0, 1))


def checked_decode(data: bytes, **kwargs: Any) -> None:
    out = decode(data, **kwargs)
    info = describe(data)
    if tuple(out.shape) != info.shape or out.dtype != info.dtype:
        raise InvariantViolation(f"decoded {out.dtype} {tuple(out.shape)}, header says {info.dtype} {info.shape}")
    if out.numel() * out.element_size() > resolve(info.codec).max_ratio * len(data):
        raise InvariantViolation(f"{len(data)}-byte frame decoded to {out.numel() * out.element_size()} bytes")


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack value; about 1 in 60 top-level values is an array nested 500-3000 deep."""
    if depth == 0 and rng.random() < 1 / 60:
        return f"{_DEEP}{rng.randint(500, 3000)}"  # msgpack.packb refuses such depth: `pack` writes it
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 8:
        return {str(rng.randrange(99)): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    leaves: list[Callable[[], Any]] = [
        lambda: None, lambda: rng.random() < 0.5, lambda: rng.randint(-(2**63), 2**64 - 1),
        lambda: rng.randint(-2, 300), lambda: rng.choice([rng.random() * 1e3, float("nan"), float("inf"), -1.0]),
        lambda: "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12))),
        lambda: rng.randbytes(rng.randrange(12))]
    return leaves[kind]()


_DEEP = "\x00deep:"


def pack(value: Any) -> bytes:
    """msgpack of `value`, with each `_DEEP<n>` string written as n nested one-element arrays."""
    data: bytes = msgpack.packb(value, use_bin_type=True)
    while (at := data.find(_DEEP.encode())) > 0:
        end = at + len(_DEEP)
        while end < len(data) and data[end:end + 1].isdigit():
            end += 1
        depth = int(data[at + len(_DEEP):end])
        data = data[:at - 1] + b"\x91" * depth + b"\xc0" + data[end:]  # the string's 1-byte fixstr header
    return data


def body_case(rng: random.Random, body_type: type, style: str) -> Callable[[], object]:
    if style == "random":
        data = rng.randbytes(rng.randrange(256)) if rng.random() < 0.5 else pack(random_value(rng))
    elif style == "mutated":
        data = mutate(rng, wire.pack_body(next(b for b in BODIES if isinstance(b, body_type))))
    else:  # its own fields (and an unknown one) holding random values, some dropped
        fields = msgpack.unpackb(wire.pack_body(next(b for b in BODIES if isinstance(b, body_type))))
        for name in rng.sample([*body_type.__struct_fields__, "later"], rng.randint(1, 3)):
            if rng.random() < 0.2:
                fields.pop(name, None)
            else:
                fields[name] = random_value(rng)
        data = pack(fields)
    return lambda: wire.unpack_body(data, body_type)


def header_case(rng: random.Random, style: str) -> Callable[[], object]:
    if style == "random":
        frames: list[bytes] = [rng.randbytes(rng.randrange(128)) for _ in range(rng.choice([2, 2, 2, 1, 3]))]
    elif style == "mutated":
        message = Message("act", rng.getrandbits(40), 1, b"", sample_ids=tuple(range(rng.randrange(6))))
        frames = [mutate(rng, bytes(wire.pack(message, sender="s0r1", plan_version=3)[0])), b"x" * rng.randrange(64)]
    else:
        fields: list[Any] = [*HEADER, 0, "extra"][:rng.randint(0, 9)]
        for _ in range(rng.randint(1, 3)):
            if fields:
                fields[rng.randrange(len(fields))] = random_value(rng)
        frames = [pack(fields), b""]
    limit = rng.choice([0, 16, wire.DEFAULT_MAX_MESSAGE_BYTES])
    return lambda: wire.unpack(frames, max_message_bytes=limit)


def delta_case(rng: random.Random, cases: list[tuple[str, list[tuple[list[int], bytes]]]]) -> Callable[[], object]:
    codec, frames = rng.choice(cases)
    last = rng.randrange(len(frames))
    replay = [(ids, mutate(rng, frame) if i == last else frame) for i, (ids, frame) in enumerate(frames[:last + 1])]
    expect = rng.random() < 0.5

    def run() -> None:
        receiver = ActivationDelta(codec)
        for ids, frame in replay:
            receiver.decode(ids, frame, shape=(len(ids), 4, 8) if expect else None)
    return run


Target = tuple[type[Exception], Callable[[random.Random], Callable[[], object]]]  # (allowed error, case maker)


def build_targets() -> dict[str, Target]:
    gen = torch.Generator().manual_seed(0)
    frames = {codec: [encode((torch.randn(shape, generator=gen) * 3).to(dtype), codec, seed=i)
                      for i, (dtype, shape) in enumerate((d, s) for d in DTYPES for s in [(0,), (37,), (5, 61), ()])]
              for codec in CODECS}
    deltas = []
    for codec in ("q3", "cocktail", "none"):
        sender, base = ActivationDelta(codec), torch.randn(6, 4, 8, generator=gen)
        deltas.append((codec, [(ids, sender.encode(ids, base[ids], seed=1)) for ids in ([0, 1, 2], [0, 1, 3, 4])]))

    def plausible(r: random.Random) -> Callable[[], object]:
        raw = r.choice(SPECS).encode("latin-1")
        data = b"SWCF\x01" + bytes([r.randrange(4), r.randrange(18), len(raw)]) + raw + r.randbytes(r.randrange(400))
        return lambda: checked_decode(data)

    def expected(r: random.Random) -> Callable[[], object]:
        original = r.choice(r.choice(list(frames.values())))
        info, data = describe(original), mutate(r, original, frame_fields=True)
        out = torch.empty(info.shape, dtype=info.dtype)
        return lambda: checked_decode(data, codec=info.codec, shape=info.shape, out=out)

    targets: dict[str, Target] = {
        "decode:random": (CodecError, lambda r: (lambda d: lambda: checked_decode(d))(r.randbytes(r.randrange(1024)))),
        "decode:plausible-header": (CodecError, plausible),
        "decode:expected-codec-shape-out": (CodecError, expected),
        "delta:mutated": (CodecError, lambda r: delta_case(r, deltas)),
    }
    for codec in CODECS:
        targets[f"decode:mutated:{codec}"] = (CodecError, lambda r, c=codec: (lambda d: lambda: checked_decode(d))(
            mutate(r, r.choice(frames[c]), frame_fields=True)))
        targets[f"decode:forged:{codec}"] = (CodecError, lambda r, c=codec: (lambda d: lambda: checked_decode(d))(
            forge(r, c)))
    for style in ("random", "mutated", "fields"):
        targets[f"wire.unpack:{style}"] = (wire.WireError, lambda r, s=style: header_case(r, s))
        for body_type in BODY_TYPES:
            targets[f"wire.unpack_body:{body_type.__name__}:{style}"] = (
                wire.WireError, lambda r, t=body_type, s=style: body_case(r, t, s))
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases in all, spread over the targets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow-s", type=float, default=2.0, help="a case slower than this counts as a hang")
    parser.add_argument("--max-rss-growth-mib", type=float, default=256.0)
    args = parser.parse_args()
    compression.set_fused(False)  # fuzz inputs are small; never wait for a compilation
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    targets = build_targets()
    names = list(targets)
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    slowest: dict[str, float] = defaultdict(float)
    escapes: list[dict[str, str]] = []
    escaped = 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for case in range(args.cases):
        name = names[case % len(names)]
        allowed, make = targets[name]
        run = make(rng)
        began = time.perf_counter()
        try:
            run()
            outcome = "decoded"
        except allowed:
            outcome = allowed.__name__
        except Exception as error:  # the finding: anything else that escaped
            outcome = f"ESCAPED {type(error).__name__}"
            escaped += 1
            if len(escapes) < 10:
                escapes.append({"target": name, "case": str(case), "error": f"{type(error).__name__}: {error}"[:300]})
        seconds = time.perf_counter() - began
        if seconds > args.slow_s:
            outcome, escaped = "ESCAPED hang", escaped + 1
        stats[name][outcome] += 1
        slowest[name] = max(slowest[name], seconds)
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    report = {
        "cases": args.cases, "seed": args.seed, "seconds": round(time.perf_counter() - started, 1),
        "targets": {name: {"cases": sum(stats[name].values()), "outcomes": dict(stats[name]),
                           "slowest_ms": round(1e3 * slowest[name], 2)} for name in names},
        "error_types": dict(sum(stats.values(), Counter())),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_growth_mib": round(growth_mib, 1),
        "escaped": escaped, "escapes": escapes,
    }
    print(json.dumps(report, indent=1))
    return 1 if escaped or growth_mib > args.max_rss_growth_mib else 0


if __name__ == "__main__":
    sys.exit(main())
