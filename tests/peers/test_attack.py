"""The fault injector: its spec, its tampering, and NaN frames that pass every header check."""
from __future__ import annotations

import math

import pytest
import torch

import compression
from peers.attack import Attack, nonfinite_frame

pytestmark = pytest.mark.usefixtures("eager_codecs")


@pytest.mark.parametrize("spec, expected", [
    ("scale:1000@1", Attack("scale", 1000.0, 1)),
    ("scale:-1e3@0", Attack("scale", -1000.0, 0)),
    ("noise:0.5@2", Attack("noise", 0.5, 2)),
])
def test_specs_parse_and_print_back(spec, expected):
    attack = Attack.parse(spec)
    assert attack == expected and Attack.parse(str(attack)) == attack


def test_nan_spec():
    attack = Attack.parse("nan@3")
    assert attack.kind == "nan" and attack.replica == 3 and str(attack) == "nan@3"


@pytest.mark.parametrize("spec", ["scale@1", "nan", "scale:1000", "noise:0@1", "noise:-1@1", "scale:x@1",
                                  "scale:inf@1", "flip@1", "", "nan@-1"])
def test_bad_specs_name_the_accepted_forms(spec):
    with pytest.raises(ValueError, match="--attack") as error:
        Attack.parse(spec)
    assert "scale" in str(error.value) and "nan" in str(error.value)


def test_apply_scales_adds_seeded_noise_and_fills_nan():
    chunk = torch.arange(6, dtype=torch.float32)
    assert torch.equal(Attack.parse("scale:1000@1").apply(chunk, 1, 7), chunk * 1000)
    noise = Attack.parse("noise:2@1")
    first, again, other = noise.apply(chunk, 1, 7), noise.apply(chunk, 1, 7), noise.apply(chunk, 2, 7)
    assert torch.equal(first, again) and not torch.equal(first, other)  # deterministic, fresh every step
    assert 0.5 < float((first - chunk).std()) < 5
    assert torch.isnan(Attack.parse("nan@1").apply(chunk, 1, 7)).all()


@pytest.mark.parametrize("codec", ["none", "fp16", "bf16", "q4", "q8", "q1@8", "q3~", "cocktail", "cocktail@8,0.5"])
def test_a_nan_frame_is_a_valid_frame_of_the_codec_that_decodes_to_nan(codec):
    values = torch.randn(1000)
    honest = compression.encode(values, codec, seed=1)
    forged = nonfinite_frame(honest)
    assert len(forged) == len(honest) and compression.describe(forged) == compression.describe(honest)
    decoded = compression.decode(forged, codec=codec, shape=(1000,))
    assert torch.isnan(decoded).any()
    assert torch.isnan(decoded).all() or codec.startswith("cocktail")  # cocktail: the values it keeps


def test_the_frame_of_a_nan_attack_starts_from_the_honest_encoding():
    encoded = []

    def encode(values):
        encoded.append(values)
        return compression.encode(values, "q4", seed=0)

    chunk = torch.randn(300)
    frame = Attack.parse("nan@1").frame(chunk, 1, 0, encode)
    assert torch.equal(encoded[0], chunk) and torch.isnan(compression.decode(frame)).all()
    scaled = Attack.parse("scale:10@1").frame(chunk, 1, 0, encode)
    assert torch.equal(encoded[1], chunk * 10) and not math.isnan(float(compression.decode(scaled).sum()))
