"""`swarm-sim local --aggregate --attack`: one of three replicas lies in every all-reduce; the robust
rule keeps the loss of an honest run and names the liar, the mean does not."""
from __future__ import annotations

import json

import pytest

from peers.attack import Attack
from peers.protocol import TrainingSpec
from swarm.cli.sim import main
from swarm.local import LocalConfig, run_local

pytestmark = pytest.mark.usefixtures("eager_codecs")

# The experiment: `tiny`, 1 stage x 3 replicas, 50 steps (batch 6: 2 sequences per replica).
STEPS = 50


def _eval_loss(aggregate="mean", attack=None):
    config = LocalConfig(TrainingSpec(batch=6, micro_batches=2, steps=STEPS, aggregate=aggregate), replicas=3,
                         attack=None if attack is None else Attack.parse(attack))
    report = run_local(config)
    assert report["final"]["replicas_identical"]
    return report["final"]["eval_loss"], report["final"]["suspects"]


@pytest.fixture(scope="module")
def honest():
    return _eval_loss()[0]


@pytest.fixture(scope="module")
def clipped():
    """centered-clip against the 1000x attacker: (eval loss, suspects)."""
    return _eval_loss("centered-clip", "scale:1000@1")


@pytest.mark.slow
def test_centered_clip_keeps_the_honest_loss_under_a_1000x_attacker(honest, clipped):
    loss, suspects = clipped
    assert abs(loss - honest) <= 0.10 * honest
    # both honest owners name s0r1 at (nearly) every step, others rarely
    assert suspects["s0r1"] >= 0.9 * 2 * STEPS
    assert max((v for k, v in suspects.items() if k != "s0r1"), default=0) <= 0.1 * 2 * STEPS


def test_the_cli_runs_the_attack_under_the_rule_it_names(tmp_path, capsys):
    path = tmp_path / "attacked.json"
    assert main(["local", "--stages", "1", "--replicas", "3", "--batch", "6", "--steps", "2", "--quiet",
                 "--aggregate", "centered-clip", "--attack", "scale:1000@1", "--report", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["config"]["training"]["aggregate"] == "centered-clip"
    assert report["config"]["attack"] == "scale:1000@1"
    assert report["final"]["suspects"]["s0r1"] >= 2 * 2 - 1
    assert "FAULT INJECTOR ACTIVE" in capsys.readouterr().err


@pytest.mark.slow
def test_mean_follows_the_attacker(honest, clipped):
    # AdamW divides out a gradient's scale, so scale:1000 under `mean` mostly hands 2/3 of the step to
    # the attacker's own (1000x, one-third-batch) gradient: the loss leaves the honest one (8% below it
    # when this was written), many times further than centered-clip's under the same attacker (0.1%).
    scaled, suspects = _eval_loss("mean", "scale:1000@1")
    assert abs(scaled - honest) > 0.03 * honest
    assert abs(scaled - honest) > 10 * abs(clipped[0] - honest)
    assert suspects["s0r1"] >= 0.9 * 2 * STEPS  # named, though nothing protects the step
    # Flip the sign and the mean climbs the loss; centered-clip does not.
    flipped, _ = _eval_loss("mean", "scale:-1000@1")
    assert flipped > 2 * honest
    clipped_flip, _ = _eval_loss("centered-clip", "scale:-1000@1")
    assert abs(clipped_flip - honest) <= 0.10 * honest


def test_help_shows_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["local", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("--aggregate", "centered-clip", "trimmed-mean", "--attack", "scale:FACTOR@R", "nan@R"):
        assert word in text


@pytest.mark.parametrize("attack, message", [("scale@1", "expected scale:FACTOR@R"),
                                             ("scale:1000@3", "--replicas is 3")])
def test_a_bad_attack_is_named(attack, message, capsys):
    assert main(["local", "--quiet", "--steps", "1", "--replicas", "3", "--batch", "6", "--attack", attack]) == 2
    assert "--attack" in (err := capsys.readouterr().err) and message in err


def test_an_unknown_rule_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["local", "--quiet", "--aggregate", "median"])
    assert exit_info.value.code == 2 and "--aggregate" in capsys.readouterr().err


def test_mean_with_a_nan_attacker_fails_naming_it(capsys):
    assert main(["local", "--quiet", "--steps", "2", "--replicas", "3", "--batch", "6", "--seq-len", "16",
                 "--eval-samples", "4", "--attack", "nan@2"]) == 2
    assert "nonfinite message from 's0r2'" in capsys.readouterr().err


def test_trimmed_mean_with_a_nan_attacker_trains(capsys):
    config = LocalConfig(TrainingSpec(batch=6, micro_batches=2, steps=2, aggregate="trimmed-mean"), replicas=3,
                         attack=Attack.parse("nan@0"), seq_len=16, eval_samples=4)
    report = run_local(config)
    assert report["final"]["replicas_identical"] and report["final"]["suspects"] == {"s0r0": 4}

