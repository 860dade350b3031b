"""`cocktail`: CocktailSGD's sparsifier as a stateless codec; wrap it in ErrorFeedback to train.

Spec: `cocktail[@<stride>,<keep>]`, default `cocktail` = `cocktail@10,0.25`. Per frame:

1. random sampling without indices: positions (offset + stride*j) mod n, j < ceil(n/stride),
   with the offset drawn from the seed, so the mask shifts every step (pass `seed=step` and
   every replica samples the same positions, which keeps an all-reduce aligned);
2. top-k within the sample: the ceil(keep * samples) largest magnitudes, positions sent as a
   1-bit mask over the sample;
3. the kept values quantized with `q4@128` (stochastic rounding).

Unsent values decode as zero. Alone that is biased; `ErrorFeedback("cocktail")` carries what
was not sent into the next step, which is how CocktailSGD trains (its one step of staleness is
the training loop's business, not the codec's). Default size: ~0.21 bits per value (~150x
smaller than fp32): 0.1 mask bits + 2.5% of values at 4 bits + their scales.

Ratio limit: a value costs at least (1/8 + 17 keep/32) / stride payload bytes (its mask bit, and
its share of the kept values' 4 bits and fp16 scales), so a frame decodes to at most
128 stride / (4 + 17 keep) float32 bytes per payload byte. Parameters beyond `MAX_RATIO` (256x)
are refused, since decode would let a small frame claim a huge tensor: stride 10 needs keep >= 0.059,
stride 8 takes any keep, stride 42 needs keep 1. The default is 155x.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator

import torch

from compression.errors import CodecError, nonfinite_error
from compression.noise import noise_vectors
from compression.quantize import BlockQuantizer
from compression.registry import register

__all__ = ["Cocktail", "MAX_RATIO"]

_VALUES = BlockQuantizer(4, 128)
_PARAMS = re.compile(r"@(\d{1,6}),(0?\.\d{1,6}|1(?:\.0*)?)")
_DEFAULT = (10, 0.25)
_MAX_STRIDE = 64  # the parser's range; MAX_RATIO bounds stride and keep together
MAX_RATIO = 256.0  # decoded float32 bytes per payload byte, at most (see the module docstring)
_MASK_CHUNK = 1 << 18  # mask bytes unpacked at a time: decode's temporaries stay a few MB


@dataclass(frozen=True)
class Cocktail:
    """Strided random sample, top-k of it, 4-bit values (see the module docstring)."""

    stride: int = _DEFAULT[0]
    keep: float = _DEFAULT[1]

    @property
    def spec(self) -> str:
        # Fixed-point, not `:g`: `1e-05` would not parse back, so the frame could not be decoded.
        keep = f"{self.keep:.6f}".rstrip("0").rstrip(".")
        return "cocktail" if (self.stride, self.keep) == _DEFAULT else f"cocktail@{self.stride},{keep}"

    @property
    def max_ratio(self) -> float:
        return 128 * self.stride / (4 + 17 * self.keep)

    def payload_size(self, numel: int, dtype: torch.dtype) -> int:
        sampled, kept = self._counts(numel)
        return 4 + -(-sampled // 8) + _VALUES.payload_size(kept, torch.float32)

    def encode(self, flat: torch.Tensor, seed: int) -> list[torch.Tensor]:
        numel = flat.numel()
        sampled, kept = self._counts(numel)
        if numel == 0:
            return [torch.zeros(4, dtype=torch.uint8, device=flat.device)] + _VALUES.encode(flat.float(), seed)
        offset = int(noise_vectors(seed, 1, 1, torch.device("cpu"))[0].item() * self.stride) % min(self.stride, numel)
        positions = self._positions(offset, sampled, numel, flat.device)
        # Check every value, not just the sample: a NaN left unsent would sit in ErrorFeedback's
        # residual and poison later steps. min/max propagate NaN in one pass.
        low, high = torch.aminmax(flat)
        if not math.isfinite(float(low)) or not math.isfinite(float(high)):
            raise nonfinite_error(flat, self.spec, float("inf"))
        sample = flat[positions].to(torch.float32)
        chosen = torch.zeros(sampled, dtype=torch.bool, device=flat.device)
        chosen[sample.abs().topk(kept, sorted=False).indices] = True
        values = _VALUES.encode(sample[chosen], seed)
        head = torch.tensor([offset], dtype=torch.int32).view(torch.uint8).to(flat.device)
        return [head] + values + [_pack_bits(chosen)]

    def decode(self, payload: torch.Tensor, numel: int, dtype: torch.dtype,
               out: torch.Tensor | None = None) -> torch.Tensor:
        sampled, kept = self._counts(numel)
        offset = int(payload[:4].cpu().view(torch.int32).item())
        if numel and not 0 <= offset < min(self.stride, numel):
            raise CodecError(f"codec {self.spec!r}: sample offset {offset} out of range (corrupted frame)")
        values_end = 4 + _VALUES.payload_size(kept, torch.float32)  # values first: fp16 scales stay aligned
        # The mask is checked first and read a slice at a time, so a corrupted frame costs a few MB
        # whatever its size; the values' own checks (scales) come before the output exists.
        mask = payload[values_end:]
        if sampled % 8 and int(mask[-1]) >> (sampled % 8):
            raise CodecError(f"codec {self.spec!r}: mask has bits set past its {sampled} samples (corrupted frame)")
        selected = sum(int(bits.sum()) for _, bits in _mask_slices(mask))
        if selected != kept:
            raise CodecError(f"codec {self.spec!r}: mask selects {selected} values, header implies "
                             f"{kept} (corrupted frame)")
        values = _VALUES.decode(payload[4:values_end], kept, torch.float32)
        if out is None:
            out = torch.zeros(numel, dtype=dtype, device=payload.device)
        else:
            out.zero_()
        done = 0
        for first, bits in _mask_slices(mask) if kept else ():
            index = bits.nonzero().view(-1)
            if index.numel():
                positions = (offset + self.stride * (index + first)) % numel
                out[positions] = values[done:done + index.numel()].to(dtype)
                done += index.numel()
        return out

    def _counts(self, numel: int) -> tuple[int, int]:
        sampled = -(-numel // self.stride)
        return sampled, min(sampled, -(-int(round(self.keep * sampled * 1e6)) // 1_000_000))

    def _positions(self, offset: int, sampled: int, numel: int, device: torch.device) -> torch.Tensor:
        return (offset + self.stride * torch.arange(sampled, device=device)) % numel


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    bits = torch.nn.functional.pad(mask.to(torch.uint8), (0, -mask.numel() % 8)).view(-1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (bits * weights).sum(dim=1, dtype=torch.uint8) if bits.numel() else bits.view(-1)


def _mask_slices(packed: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(index of the first sample, its bits as bool) for each slice of `_MASK_CHUNK` mask bytes."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    for start in range(0, packed.numel(), _MASK_CHUNK):
        yield 8 * start, ((packed[start:start + _MASK_CHUNK, None] >> shifts) & 1).view(-1).bool()


def _factory(params: str) -> Cocktail:
    if not params:
        return Cocktail()
    match = _PARAMS.fullmatch(params)
    if match is None:
        raise CodecError(f"malformed parameters {params!r} for codec 'cocktail'; expected e.g. 'cocktail' or "
                         "'cocktail@10,0.25' (stride, fraction of the sample kept)")
    stride, keep = int(match.group(1)), float(match.group(2))
    if not 1 <= stride <= _MAX_STRIDE or not 0 < keep <= 1:
        raise CodecError(f"cocktail stride must be 1..{_MAX_STRIDE} and keep in (0, 1], got {stride}, {keep}")
    codec = Cocktail(stride, keep)
    if codec.max_ratio > MAX_RATIO:
        raise CodecError(f"cocktail@{stride},{match.group(2)} compresses up to {codec.max_ratio:.0f}x, beyond "
                         f"cocktail's limit of {MAX_RATIO:.0f}x (a small frame could claim a huge tensor): lower "
                         f"the stride or raise keep (stride 10 needs keep >= 0.059; the default is "
                         f"{Cocktail().max_ratio:.0f}x)")
    return codec


register("cocktail", _factory)
