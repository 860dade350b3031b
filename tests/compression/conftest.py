"""Compression tests run the eager path unless a test asks for the compiled one (it compiles
for seconds on first use; `test_fused.py` covers it once)."""
import pytest


@pytest.fixture(autouse=True)
def _eager_by_default(eager_codecs):
    yield
