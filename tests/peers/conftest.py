"""Fixtures shared by the peer tests."""
from __future__ import annotations

import pytest

from peers.dht import SwarmDHT


@pytest.fixture(scope="module")
def nodes():
    """Two real DHT nodes, the second bootstrapped from the first (one pair per test module)."""
    first = SwarmDHT()
    second = SwarmDHT(first.multiaddrs())
    yield first, second
    second.close()
    first.close()
