import json

import numpy as np
import pytest
import torch

from pretrainer.data.loader import BatchBuilder, PackedLMLoader, eval_batches
from pretrainer.errors import PretrainerError

KINDS = ["mlm", "clm", "mlm_nsp"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mlm_layout(stream, wordpiece):
    loader = PackedLMLoader(stream, batch_size=4, seq_len=16, kind="mlm", tokenizer=wordpiece, seed=0,
                            whole_word=True)
    batch = next(loader)
    ids = batch["input_ids"]
    assert ids.shape == (4, 16) and ids.dtype == torch.long
    assert (ids[:, 0] == wordpiece.cls_id).all() and (ids[:, -1] == wordpiece.sep_id).all()
    assert batch["attention_mask"].dtype == torch.bool and batch["attention_mask"].all()
    special = batch["special_tokens_mask"]
    assert torch.equal(special, torch.isin(ids, torch.tensor(wordpiece.special_ids)))
    assert special[:, 0].all() and special[:, -1].all()
    assert torch.equal(batch["word_starts"], torch.from_numpy(wordpiece.word_starts(ids.numpy())))
    assert loader.tokens_per_batch == 4 * 16
    body = ids[0, 1:-1].numpy()  # the body is a contiguous stretch of the packed stream
    found = np.lib.stride_tricks.sliding_window_view(np.asarray(stream.tokens), 14)
    assert (found == body).all(axis=1).any()


def test_clm_layout(stream, wordpiece):
    batch = next(PackedLMLoader(stream, 3, 10, "clm", wordpiece, seed=0))
    assert set(batch) == {"input_ids"} and batch["input_ids"].shape == (3, 11)


@pytest.mark.parametrize("kind", KINDS)
def test_resume_continues_exactly(stream, wordpiece, kind):
    def loader():
        return PackedLMLoader(stream, 4, 16, kind, wordpiece, seed=7)

    uninterrupted = loader()
    k = uninterrupted.batches_per_epoch - 2  # the resumed stretch crosses an epoch boundary
    for _ in range(k):
        next(uninterrupted)
    state = json.loads(json.dumps(uninterrupted.state_dict()))  # survives a JSON checkpoint
    expected = [next(uninterrupted) for _ in range(5)]

    resumed = loader()
    resumed.load_state_dict(state)
    assert all(same(next(resumed), want) for want in expected)


def test_epochs_differ_and_seeds_differ(stream, wordpiece):
    loader = PackedLMLoader(stream, 4, 16, "mlm", wordpiece, seed=0)
    first_epoch = [next(loader) for _ in range(loader.batches_per_epoch)]
    second_epoch = next(loader)
    assert loader.epoch == 1 and not same(first_epoch[0], second_epoch)
    assert not same(first_epoch[0], next(PackedLMLoader(stream, 4, 16, "mlm", wordpiece, seed=1)))


@pytest.mark.parametrize("kind", ["mlm", "clm"])
def test_ranks_take_disjoint_windows(stream, wordpiece, kind):
    rows = []
    for rank in range(2):
        loader = PackedLMLoader(stream, 4, 16, kind, wordpiece, seed=3, rank=rank, world_size=2)
        batches = [next(loader) for _ in range(loader.batches_per_epoch)]
        rows.append({tuple(r.tolist()) for b in batches for r in b["input_ids"]})
        assert loader.epoch == 0
    assert rows[0] and rows[1] and not rows[0] & rows[1]
    single = PackedLMLoader(stream, 4, 16, kind, wordpiece, seed=3)
    assert single.batches_per_epoch >= 2 * loader.batches_per_epoch


def test_nsp_pairs(stream, wordpiece):
    tok = wordpiece
    loader = PackedLMLoader(stream, 50, 24, "mlm_nsp", tok, seed=0)
    batches = [next(loader) for _ in range(8)]
    labels = torch.cat([b["next_sentence_label"] for b in batches])
    assert labels.dtype == torch.long and 0.4 < labels.float().mean() < 0.6
    for batch in batches:
        ids, types, attention = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
        for row, row_types, row_attention in zip(ids.tolist(), types.tolist(), attention.tolist()):
            n = sum(row_attention)
            assert row_attention == [True] * n + [False] * (len(row) - n)
            assert row[n:] == [tok.pad_id] * (len(row) - n)
            seps = [i for i, t in enumerate(row[:n]) if t == tok.sep_id]
            assert row[0] == tok.cls_id and len(seps) == 2 and seps[1] == n - 1
            assert seps[0] >= 2 and seps[1] - seps[0] >= 2  # both halves hold text
            assert row_types == [0] * (seps[0] + 1) + [1] * (n - seps[0] - 1) + [0] * (len(row) - n)


def test_nsp_real_next_follows_and_random_comes_from_elsewhere(stream, wordpiece):
    builder = BatchBuilder(stream, 24, "mlm_nsp", wordpiece)
    rng = np.random.default_rng(0)
    doc_of = lambda pos: np.searchsorted(stream.doc_starts, pos, side="right") - 1  # noqa: E731
    seen = set()
    for anchor in range(0, len(stream), 7):
        (a0, a1), (b0, b1), label = builder._pair(anchor, rng)
        seen.add(label)
        assert a0 < a1 and b0 < b1 and (a1 - a0) + (b1 - b0) <= 24 - 3
        assert doc_of(a0) == doc_of(a1 - 1) and doc_of(b0) == doc_of(b1 - 1)  # halves stay in a document
        if label == 0:
            assert b0 == a1
        else:
            assert doc_of(b0) != doc_of(a0)
        assert a0 in set(stream.sentence_starts)
    assert seen == {0, 1}


def test_nsp_needs_two_documents(wordpiece, stream_of):
    one_doc = stream_of(["Just one document. With two sentences."])
    with pytest.raises(PretrainerError, match="at least 2"):
        PackedLMLoader(one_doc, 1, 8, "mlm_nsp", wordpiece, seed=0)


def test_corpus_smaller_than_a_batch(wordpiece, stream_of):
    tiny = stream_of(["the cat sat."])
    with pytest.raises(PretrainerError, match="too small"):
        PackedLMLoader(tiny, 8, 128, "mlm", wordpiece, seed=0)


@pytest.mark.parametrize("kind", KINDS)
def test_eval_batches_are_finite_and_deterministic(stream, wordpiece, kind):
    first = list(eval_batches(stream, 8, 16, kind, wordpiece))
    second = list(eval_batches(stream, 8, 16, kind, wordpiece))
    assert len(first) > 1 and all(same(a, b) for a, b in zip(first, second))
    assert len(list(eval_batches(stream, 8, 16, kind, wordpiece, max_batches=2))) == 2


def test_eval_mlm_covers_every_token_once(stream, wordpiece):
    bodies = [row[1:-1] for b in eval_batches(stream, 8, 16, "mlm", wordpiece) for row in b["input_ids"]]
    assert torch.equal(torch.cat(bodies), torch.from_numpy(np.asarray(stream.tokens, dtype=np.int64)))


def test_eval_clm_predicts_every_token_once(stream, wordpiece):
    targets = [row[1:] for b in eval_batches(stream, 8, 16, "clm", wordpiece) for row in b["input_ids"]]
    assert torch.equal(torch.cat(targets), torch.from_numpy(np.asarray(stream.tokens[1:], dtype=np.int64)))


def test_eval_on_a_stream_shorter_than_one_window(wordpiece, stream_of):
    tiny = stream_of(["the cat sat on the mat."])
    (batch,) = eval_batches(tiny, 4, 128, "mlm", wordpiece)
    assert batch["input_ids"].shape == (1, len(tiny) + 2)
    (batch,) = eval_batches(tiny, 4, 128, "clm", wordpiece)
    assert batch["input_ids"].shape == (1, len(tiny))
