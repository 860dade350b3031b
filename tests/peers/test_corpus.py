"""The corpus cache: a corpus is fetched once, kept by hash, and refused when it is not what the plan says."""
from __future__ import annotations

import hashlib

import pytest

from peers.daemon.corpus import CorpusCache

CORPUS = b"the coordinator's corpus\n" * 100
SHA = hashlib.sha256(CORPUS).hexdigest()


def test_a_corpus_is_fetched_once_and_then_read_from_the_cache(tmp_path):
    calls = []
    cache = CorpusCache(tmp_path)
    assert cache.get(SHA, len(CORPUS), lambda: calls.append(1) or CORPUS) == (CORPUS, True)
    assert cache.get(SHA, len(CORPUS), lambda: calls.append(1) or CORPUS) == (CORPUS, False)
    assert calls == [1]


def test_a_damaged_cache_entry_is_fetched_again(tmp_path):
    cache = CorpusCache(tmp_path)
    cache.get(SHA, len(CORPUS), lambda: CORPUS)
    (tmp_path / "corpus" / f"{SHA}.bin").write_bytes(b"bit rot")
    assert cache.get(SHA, len(CORPUS), lambda: CORPUS) == (CORPUS, True)


def test_a_corpus_other_than_the_announced_one_is_refused_and_not_cached(tmp_path):
    cache = CorpusCache(tmp_path)
    with pytest.raises(ValueError, match="refusing it"):
        cache.get(SHA, len(CORPUS), lambda: b"something else")
    assert not (tmp_path / "corpus" / f"{SHA}.bin").exists()
