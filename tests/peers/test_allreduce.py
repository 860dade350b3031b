"""The data-parallel all-reduce over a real Transport: exact mean with `none`, bit-identical
replicas with lossy codecs, error feedback, and a timeout that leaves the gradients untouched."""

import pytest
import torch

from peers.allreduce import GradientAverager
from peers.dataplane.transport import InProcessHub, PeerTimeout
from peers.protocol import BUCKET_VALUES
from tests.threads import run_concurrently

pytestmark = pytest.mark.usefixtures("eager_codecs")


def _run(averagers, tensors_per_replica, step=1):
    _, errors = run_concurrently(
        [lambda a=averager, t=tensors: a.average(step, t)
         for averager, tensors in zip(averagers, tensors_per_replica, strict=True)],
        timeout=60, what="an all-reduce replica")
    return errors


def _group(size, codec, **kwargs):
    hub = InProcessHub()
    names = [f"r{i}" for i in range(size)]
    return hub, [GradientAverager(hub.endpoint(name), names, codec, **kwargs) for name in names]


def _grads(size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(7, 5, generator=generator), torch.randn(13, generator=generator)] for _ in range(size)]


@pytest.mark.parametrize("bucket_values", [1, 30, BUCKET_VALUES])  # a bucket per value, some tensors, all
@pytest.mark.parametrize("size", [2, 3, 5])
def test_none_codec_gives_the_exact_mean(size, bucket_values):
    _, averagers = _group(size, "none", bucket_values=bucket_values)
    grads = _grads(size)
    expected = [torch.stack([g[i] for g in grads]).mean(0) for i in range(2)]
    assert not _run(averagers, grads)
    for replica in grads:
        for got, want in zip(replica, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_lossy_codec_leaves_replicas_bit_identical_and_counts_bytes():
    _, averagers = _group(3, "q4")
    grads = _grads(3, seed=1)
    expected = torch.stack([g[0] for g in grads]).mean(0)
    assert not _run(averagers, grads)
    for replica in grads[1:]:
        for got, first in zip(replica, grads[0], strict=True):
            assert torch.equal(got, first)
    assert (grads[0][0] - expected).norm() < 0.5 * expected.norm()  # close, not exact
    values = sum(a.values_sent for a in averagers)
    assert values == 2 * 2 * 48  # each replica sends 2 of 3 chunks in each phase: 4/3 of 48 values
    assert 8 * sum(a.bytes_sent for a in averagers) > 4 * values  # 4 bits plus scales and headers


def test_error_feedback_cancels_quantisation_error_over_steps():
    """Averaging the same gradients for many steps: with feedback the running mean converges."""
    results = {}
    for feedback in (False, True):
        _, averagers = _group(2, "q2", error_feedback=feedback)
        base = _grads(2, seed=2)
        total = torch.zeros(7, 5)
        steps = 40
        for step in range(1, steps + 1):
            grads = [[g.clone() for g in replica] for replica in base]
            assert not _run(averagers, grads, step=step)
            total += grads[0][0]
        exact = (base[0][0] + base[1][0]) / 2
        results[feedback] = ((total / steps - exact).norm() / exact.norm()).item()
    assert results[True] < 0.5 * results[False]


def test_timeout_raises_and_leaves_tensors_untouched():
    _, averagers = _group(2, "none", timeout=0.2)
    grads = _grads(2)
    before = [g.clone() for g in grads[0]]
    with pytest.raises(PeerTimeout):
        averagers[0].average(1, grads[0])  # replica 1 never shows up
    assert all(torch.equal(a, b) for a, b in zip(grads[0], before, strict=True))


def test_single_replica_is_a_no_op_and_bad_group_is_rejected():
    hub = InProcessHub()
    tensors = [torch.ones(3)]
    GradientAverager(hub.endpoint("solo"), ["solo"], "q4").average(1, tensors)
    assert torch.equal(tensors[0], torch.ones(3))
    with pytest.raises(ValueError, match="not in its all-reduce group"):
        GradientAverager(hub.endpoint("x"), ["a", "b"], "q4")


def test_a_bucket_goes_out_when_its_last_tensor_is_final_and_not_before():
    hub, (sender, _) = _group(2, "none", bucket_values=40)
    sizes = [35, 13, 20, 20]  # buckets: [0], [1, 2], [3]
    exchange = sender.begin(1, sizes)
    assert exchange.buckets == [[0], [1, 2], [3]]
    grads = [torch.ones(n) for n in sizes]
    exchange.ready(1, grads[1])
    assert sender.values_sent == 0  # bucket 1 still waits for tensor 2
    exchange.ready(0, grads[0])
    assert sender.values_sent == 35 // 2  # bucket 0's share for owner 1
    exchange.ready(2, grads[2])
    assert sender.values_sent == 35 // 2 + 33 // 2
    with pytest.raises(ValueError, match="already reported final"):
        exchange.ready(2, grads[2])


def test_a_failing_bucket_check_sends_nothing_of_that_bucket_and_drops_residuals():
    _, (sender, _) = _group(2, "q4", bucket_values=40)
    refused = RuntimeError("NaN in bucket")

    def check(grads):
        if any(g.numel() == 20 for g in grads):
            raise refused

    exchange = sender.begin(1, [35, 20], check=check)
    exchange.ready(0, torch.ones(35))
    assert sender.values_sent > 0 and len(sender._sender_feedback) == 1
    with pytest.raises(RuntimeError, match="NaN in bucket"):
        exchange.ready(1, torch.ones(20))
    assert sender.values_sent == 35 // 2 and len(sender._sender_feedback) == 0
