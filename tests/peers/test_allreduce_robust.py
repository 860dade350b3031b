"""The all-reduce with one hostile replica of three: robust rules stay close to the honest mean and
leave every replica bit-identical; `mean` follows the attacker, or fails the step on NaN."""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from peers.allreduce import GradientAverager
from peers.attack import Attack
from peers.dataplane.transport import BadMessage, InProcessHub, Message, PeerTimeout
from peers.dataplane.wire import REDUCE_KIND
from tests.threads import run_concurrently

pytestmark = pytest.mark.usefixtures("eager_codecs")

NAMES = ["r0", "r1", "r2"]


def _group(rule, attack=None, codec="q4", timeout=None, corrupt=None):
    hub = InProcessHub()
    averagers = []
    for name in NAMES:
        transport = hub.endpoint(name)
        if name == corrupt:
            transport = _Corrupting(transport)
        averagers.append(GradientAverager(transport, NAMES, codec, aggregate=rule,
                                          attack=None if attack is None else Attack.parse(attack), timeout=timeout))
    return hub, averagers


class _Corrupting:
    """A transport whose reduce-scatter frames turn to garbage on the way out."""

    def __init__(self, transport):
        self.name, self._transport = transport.name, transport

    def send(self, to, message: Message):
        if message.kind == REDUCE_KIND:
            message = replace(message, payload=b"SWCF\x01garbage")
        self._transport.send(to, message)

    def recv(self, *args, **kwargs):
        return self._transport.recv(*args, **kwargs)


def _grads(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(64, 16, generator=generator), torch.randn(40, generator=generator)] for _ in NAMES]


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _run(averagers, grads, step=1):
    _, errors = run_concurrently([lambda a=a, g=g: a.average(step, g) for a, g in zip(averagers, grads, strict=True)],
                                 timeout=60, what="an all-reduce replica")
    return errors


def _honest_mean(grads):
    return torch.stack([_flat(g) for g in grads]).mean(0)


@pytest.mark.parametrize("rule", ["clip", "trimmed-mean", "centered-clip"])
@pytest.mark.parametrize("attack", ["scale:1000@1", "noise:100@1", "nan@1"])
def test_robust_rules_survive_one_attacker(rule, attack, caplog):
    _, averagers = _group(rule, attack)
    grads = _grads()
    target = _honest_mean(grads)
    largest = max(float(_flat(g).norm()) for g in grads)
    with caplog.at_level(logging.WARNING, logger="peers.allreduce"):
        assert not _run(averagers, grads)
    results = [_flat(g) for g in grads]
    assert all(torch.equal(result, results[0]) for result in results[1:])  # bit-identical everywhere
    assert float((results[0] - target).norm()) < largest  # within one honest share of the mean, not 333x off
    # The two honest owners (r0, r2) name r1; the attacker's own chunk was aggregated honestly.
    assert averagers[0].suspects == {"r1": 1} and averagers[2].suspects == {"r1": 1} and not averagers[1].suspects
    assert "FAULT INJECTOR ACTIVE" in caplog.text
    flagged = [record.getMessage() for record in caplog.records if "flags 'r1'" in record.getMessage()]
    assert len(flagged) == 2 and all(rule in message for message in flagged)


def test_mean_follows_a_scaled_attacker_but_names_it():
    _, averagers = _group("mean", "scale:1000@1")
    grads = _grads()
    target = _honest_mean(grads)
    assert not _run(averagers, grads)
    assert float((_flat(grads[0]) - target).norm()) > 100 * float(target.norm())
    assert averagers[0].suspects == {"r1": 1}


def test_without_an_attacker_robust_rules_stay_near_the_mean():
    _, averagers = _group("centered-clip")
    grads = _grads(seed=3)
    target = _honest_mean(grads)
    assert not _run(averagers, grads)
    assert float((_flat(grads[0]) - target).norm()) < 0.5 * float(target.norm())
    assert not any(a.suspects for a in averagers)


def test_mean_with_a_nan_share_fails_the_step_and_leaves_the_gradients():
    hub, averagers = _group("mean", "nan@1", timeout=2.0)
    grads = _grads()
    before = [[t.clone() for t in g] for g in grads]
    errors = _run(averagers, grads)
    nonfinite = [e for e in errors if isinstance(e, BadMessage)]
    assert nonfinite and all(e.reason == "nonfinite" and e.sender == "r1" for e in nonfinite)
    assert all(isinstance(e, (BadMessage, PeerTimeout)) for e in errors)
    for got, want in zip(grads[0] + grads[2], before[0] + before[2], strict=True):
        assert torch.equal(got, want)  # nothing applied on the honest owners
    assert averagers[0].suspects["r1"] == 1


def test_a_garbage_share_is_malformed_under_mean_and_left_out_under_robust_rules():
    _, averagers = _group("mean", timeout=2.0, corrupt="r1")
    errors = _run(averagers, _grads())
    assert any(isinstance(e, BadMessage) and e.reason == "malformed" and e.sender == "r1" for e in errors)

    _, averagers = _group("trimmed-mean", corrupt="r1")
    grads = _grads()
    assert not _run(averagers, grads)
    assert torch.equal(_flat(grads[0]), _flat(grads[2])) and torch.equal(_flat(grads[0]), _flat(grads[1]))
    assert averagers[0].suspects == {"r1": 1}


def test_the_attack_acts_only_on_its_replica_and_the_rule_is_checked():
    _, averagers = _group("mean", "scale:2@1")
    assert [a.attack is not None for a in averagers] == [False, True, False]
    with pytest.raises(ValueError, match="centered-clip"):
        GradientAverager(InProcessHub().endpoint("a"), ["a"], aggregate="median")
