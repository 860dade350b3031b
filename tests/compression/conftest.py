"""Compression tests run the eager path unless a test asks for the compiled one (it compiles
for seconds on first use; `test_fused.py` covers it once)."""
import pytest

from compression import set_fused


@pytest.fixture(autouse=True)
def eager_codecs():
    set_fused(False)
    yield
    set_fused(True)
