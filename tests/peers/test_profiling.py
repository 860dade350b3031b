"""A peer measures its codecs' speed: values through one codec pass a second, as its record announces it."""
import itertools

import pytest

from peers import profiling
from peers.protocol import PeerRecord


def test_the_codec_rate_counts_an_encode_and_a_decode_per_value(monkeypatch):
    ticks = itertools.count(step=0.004)   # every clock reading 4 ms after the last: each round takes 4 ms
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(ticks))
    assert profiling.measure_codec("none", values=2**16, runs=3) == pytest.approx(round(2 * 2**16 / 0.004 / 1e9, 4))


def test_a_measured_rate_is_one_a_record_accepts():
    rate = profiling.measure_codec("q4", values=4096, runs=3)  # below the compiled kernels: no compilation
    record = PeerRecord(name="p", address="tcp://127.0.0.1:1", device="cpu", tflops=1.0, memory_gb=1.0,
                        codec_gvalues=rate)
    assert PeerRecord.from_wire(record.to_wire()).codec_gvalues == rate > 0
