"""The compiled (torch.compile) path and the eager path make interchangeable frames."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compression import CodecError, decode, encode, set_fused


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["q3"])
def test_compiled_and_eager_frames_decode_each_other(codec):
    x = torch.randn(1 << 17, generator=torch.Generator().manual_seed(5))
    set_fused(False)
    eager = encode(x, codec, seed=11)
    set_fused(True, min_numel=1 << 16)
    compiled = encode(x, codec, seed=11)
    assert len(compiled) == len(eager)
    a = decode(eager)                     # compiled decode of the eager frame
    b = decode(compiled)
    set_fused(False)
    assert torch.equal(a, decode(eager))  # eager decode gives the same values
    assert torch.equal(b, decode(compiled))
    # Same noise and math, so codes agree except where float rounding sits on a boundary.
    assert (a != b).float().mean() < 1e-3
    assert float((x - b).norm() / x.norm()) < 0.40


@pytest.mark.slow
def test_compiled_calls_from_threads_agree_and_restore_global_settings():
    from concurrent.futures import ThreadPoolExecutor

    before = (torch._dynamo.config.automatic_dynamic_shapes, torch._inductor.config.emulate_precision_casts)
    tensors = [torch.randn((1 << 17) + 256 * i, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    set_fused(True, min_numel=1 << 16)
    expected = [encode(t, "q3", seed=i) for i, t in enumerate(tensors)]
    with ThreadPoolExecutor(3) as pool:
        frames = list(pool.map(lambda it: encode(it[1], "q3", seed=it[0]), enumerate(tensors)))
    set_fused(False)
    assert frames == expected
    # dynamo/inductor settings are process-global: our compiled calls must not leave them changed
    assert (torch._dynamo.config.automatic_dynamic_shapes, torch._inductor.config.emulate_precision_casts) == before


@pytest.mark.slow
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_compiled_path_rejects_nonfinite_values(value):
    x = torch.randn(1 << 17)
    x[70001] = value
    set_fused(True, min_numel=1 << 16)
    with pytest.raises(CodecError):
        encode(x, "q3", seed=1)


@pytest.mark.slow
def test_compiled_path_recovers_from_an_outlier_its_peak_sample_missed():
    # the frame's scale exponent comes from a strided sample; an unsampled 1e6 overflows fp16 on
    # the first try and must be re-encoded from the exact peak, not rejected or turned into inf
    x = torch.randn(1 << 17)
    x[70001] = 1e6
    set_fused(True, min_numel=1 << 16)
    y = decode(encode(x, "q3", seed=1))
    assert torch.isfinite(y).all() and abs(float(y[70001]) - 1e6) <= 1e6 / 7


def test_import_leaves_the_compiler_unloaded():
    """Importing compression must not load dynamo/inductor (seconds, and process-wide settings);
    `fused` imports them and applies its settings on the first compiled call. A fresh process,
    because this one has long loaded them. Plain `import torch` (2.13) loads neither."""
    code = ("import sys, compression; "
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2], check=True)
    assert result.stdout.strip() == "[]"
