"""The training and codec flags shared by `swarm-sim local` and `swarm-coordinator`: one spec, errors by flag."""
from __future__ import annotations

import argparse

import pytest

from peers.protocol import Codecs, TrainingSpec
from swarm.flags import (
    add_codec_arguments,
    add_training_arguments,
    as_flags,
    check_training,
    codecs_from_args,
    training_from_args,
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    add_codec_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_are_the_specs_defaults():
    args = _parse()
    assert training_from_args(args) == TrainingSpec()
    assert codecs_from_args(args) == Codecs("q3", "q6", "q4", forward_delta=False)


def test_flags_become_typed_fields(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("text")
    args = _parse("--model", "small", "--batch", "16", "--micro-batches", "4", "--steps", "7", "--lr", "1e-4",
                  "--warmup-steps", "3", "--seed", "5", "--data", str(corpus), "--fwd", "q2", "--bwd", "fp16",
                  "--grad", "cocktail", "--fwd-delta", "--dtype", "bf16")
    assert training_from_args(args) == TrainingSpec(model="small", batch=16, micro_batches=4, steps=7, lr=1e-4,
                                                    warmup_steps=3, seed=5, data=str(corpus.resolve()),
                                                    dtype="bf16")
    assert codecs_from_args(args) == Codecs("q2", "fp16", "cocktail", forward_delta=True)


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], r"--batch: expected `int` >= 1, got 0"),
    (["--micro-batches", "-2"], r"--micro-batches: expected `int` >= 1, got -2"),
    (["--lr", "-1"], r"--lr: expected `float` > 0.0, got -1.0"),
    (["--lr", "nan"], r"--lr: expected `float` > 0.0, got nan"),
    (["--warmup-steps", "-1"], r"--warmup-steps: expected `int` >= 0, got -1"),
    (["--model", "huge"], "--model: unknown preset 'huge'"),
    (["--data", "/no/such/corpus"], "--data: '/no/such/corpus' does not exist"),
])
def test_bad_training_flags_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        training_from_args(_parse(*argv))


@pytest.mark.parametrize("argv, message", [
    (["--fwd", "q99"], "--fwd: "),
    (["--bwd", "zstd"], "--bwd: unknown codec 'zstd'"),
    (["--grad", "Q4"], "--grad: malformed codec spec"),
])
def test_bad_codecs_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        codecs_from_args(_parse(*argv))


def test_specs_survive_a_round_trip_through_their_flags(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("text")
    training = TrainingSpec(model="small", batch=16, micro_batches=4, steps=7, lr=1e-4, warmup_steps=3, seed=5,
                            data=str(corpus.resolve()), dtype="bf16")
    codecs = Codecs("q2", "fp16", "cocktail", forward_delta=True)
    args = _parse(*as_flags(training, codecs))
    assert training_from_args(args) == training and codecs_from_args(args) == codecs


@pytest.mark.parametrize("rule", ["mean", "clip", "trimmed-mean", "centered-clip"])
def test_the_aggregation_rule_is_a_training_field_and_round_trips(rule):
    training = TrainingSpec(aggregate=rule)
    assert training_from_args(_parse("--aggregate", rule)) == training
    assert training_from_args(_parse(*as_flags(training, Codecs()))).aggregate == rule


def test_an_unknown_aggregation_rule_is_refused(capsys):
    with pytest.raises(SystemExit):
        _parse("--aggregate", "median")
    assert "--aggregate" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--aggregate"):
        check_training(TrainingSpec(aggregate="median"))  # type: ignore[arg-type]
