"""Data: byte tokens, stable sample ids, a disjoint held-out split, deterministic batches."""
import json

import pytest
import torch

import models
from models.data import EVAL_EVERY


@pytest.fixture(scope="module")
def kjv():
    return models.SequenceDataset(models.read_corpus(models.default_corpus_path()), 64)


def test_default_corpus_is_the_bundled_bible():
    data = models.read_corpus(models.default_corpus_path())
    assert len(data) > 3_000_000
    assert data.startswith(b"In the beginning God created the heaven and the earth.")


def test_tokenizer_round_trips_utf8():
    tokenizer = models.ByteTokenizer()
    text = "Grüße, world \u2013 ok"
    tokens = tokenizer.encode(text)
    assert tokens.dtype == torch.long and int(tokens.max()) < tokenizer.vocab
    assert tokenizer.decode(tokens) == text


def test_sample_ids_name_fixed_windows(kjv):
    data = models.read_corpus(models.default_corpus_path())
    batch = kjv.sequences(torch.tensor([0, 7]))
    assert bytes(batch.tokens[1].tolist()) == data[7 * 64: 8 * 64 + 1]
    torch.testing.assert_close(batch.targets[:, :-1], batch.inputs[:, 1:])


def test_eval_split_is_held_out(kjv):
    train, held_out = set(kjv.train_ids.tolist()), set(kjv.eval_ids.tolist())
    assert not train & held_out
    assert len(train) + len(held_out) == kjv.size
    assert all(i % EVAL_EVERY == EVAL_EVERY - 1 for i in held_out)


def test_batches_depend_only_on_seed_and_step(kjv):
    a, b = kjv.train_batch(5, 8, seed=1), kjv.train_batch(5, 8, seed=1)
    assert torch.equal(a.sample_ids, b.sample_ids) and torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.sample_ids, kjv.train_batch(5, 8, seed=2).sample_ids)


def test_small_subset_visits_every_sample_once_per_epoch():
    dataset = models.SequenceDataset(models.read_corpus(models.default_corpus_path()), 32, max_train=14)
    epoch = torch.cat([dataset.train_batch(step, 4, seed=0).sample_ids for step in (1, 2, 3)])
    assert len(set(epoch.tolist())) == 12  # 3 whole batches; 2 samples left over are dropped
    for step in range(1, 40):  # no batch ever repeats a sample (AQ-SGD keys rows by sample id)
        ids = dataset.train_batch(step, 4, seed=0).sample_ids.tolist()
        assert len(set(ids)) == 4
    with pytest.raises(ValueError, match="does not fit the training split of 14"):
        dataset.train_batch(1, 15, seed=0)


def test_chunk_requires_even_split(kjv):
    batch = kjv.train_batch(1, 6, seed=0)
    assert [len(part) for part in batch.chunk(3)] == [2, 2, 2]
    with pytest.raises(ValueError, match="does not split into 4"):
        batch.chunk(4)


def test_user_text_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 5000)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": "y" * 100}) for _ in range(50)))
    assert models.read_corpus(tmp_path / "a.txt") == b"x" * 5000
    assert models.read_corpus(tmp_path / "b.jsonl") == "\n".join(["y" * 100] * 50).encode()
    assert models.read_corpus(tmp_path).startswith(b"x" * 5000)


def test_bad_data_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.read_corpus(tmp_path / "missing.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2.*text"):
        models.read_corpus(tmp_path / "bad.jsonl")
    (tmp_path / "number.jsonl").write_text('{"text": 5}\n')
    with pytest.raises(ValueError, match=r"number.jsonl:1.*text"):
        models.read_corpus(tmp_path / "number.jsonl")
    with pytest.raises(ValueError, match="too few"):
        models.SequenceDataset(b"short text", 64)
