"""Fixtures shared by the whole suite."""
import pytest

import compression


@pytest.fixture
def eager_codecs():
    """Quantize eagerly: small test tensors should never wait seconds for `torch.compile`
    (`tests/compression/test_fused.py` covers the compiled path)."""
    compression.set_fused(False)
    yield
    compression.set_fused(True)
