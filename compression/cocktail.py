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
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from compression.errors import CodecError, nonfinite_error
from compression.noise import noise_vectors
from compression.quantize import BlockQuantizer
from compression.registry import register

__all__ = ["Cocktail"]

_VALUES = BlockQuantizer(4, 128)
_PARAMS = re.compile(r"@(\d{1,6}),(0?\.\d{1,6}|1(?:\.0*)?)")
_DEFAULT = (10, 0.25)
# The mask costs 1 bit per sampled value, so a frame of P bytes decodes to at most 8 * stride * P
# values: capping the stride keeps a 64 KB frame from making decode allocate more than 128 MB.
_MAX_STRIDE = 64


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
        chosen = _unpack_bits(payload[values_end:], sampled)
        if int(chosen.sum()) != kept:
            raise CodecError(f"codec {self.spec!r}: mask selects {int(chosen.sum())} values, header implies "
                             f"{kept} (corrupted frame)")
        values = _VALUES.decode(payload[4:values_end], kept, torch.float32)
        if out is None:
            out = torch.zeros(numel, dtype=dtype, device=payload.device)
        else:
            out.zero_()
        if kept:
            out[self._positions(offset, sampled, numel, payload.device)[chosen]] = values.to(dtype)
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


def _unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed[:, None] >> shifts) & 1).view(-1)[:count].bool()


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
    return Cocktail(stride, keep)


register("cocktail", _factory)
