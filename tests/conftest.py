"""Fixtures shared by the whole suite."""
import pytest

import compression
from peers.dht import SwarmDHT


@pytest.fixture
def eager_codecs():
    """Quantize eagerly: small test tensors should never wait seconds for `torch.compile`
    (`tests/compression/test_fused.py` covers the compiled path)."""
    compression.set_fused(False)
    yield
    compression.set_fused(True)


@pytest.fixture(scope="module")
def nodes():
    """Two real DHT nodes, the second bootstrapped from the first (one pair per test module)."""
    first = SwarmDHT()
    second = SwarmDHT(first.multiaddrs())
    yield first, second
    second.close()
    first.close()
