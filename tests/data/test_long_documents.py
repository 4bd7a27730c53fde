"""Long documents: which word pieces truncation keeps, how chunks cover a document, and what a
chunked batch holds (data/long_documents.py)."""

import pytest

from pretrainer.data.long_documents import (ChunkedDataset, LongDocuments, chunk_spans, encode_long_examples,
                                            encode_texts, encoding_cost, keep_head_tail)
from pretrainer.data.readers import LabeledExamples
from pretrainer.errors import PretrainerError


def test_head_tail_keeps_the_first_h_and_the_last_rest_by_hand():
    pieces = list(range(100, 120))  # 20 pieces
    assert keep_head_tail(pieces, 10, 3) == [100, 101, 102, 113, 114, 115, 116, 117, 118, 119]
    assert keep_head_tail(pieces, 20, 3) == pieces  # fits: nothing cut
    # Through the settings: max_len 12 leaves 10 pieces between [CLS] and [SEP].
    long = LongDocuments(truncation="head_tail", head_tokens=3)
    assert long.keep(pieces, 12) == [100, 101, 102, 113, 114, 115, 116, 117, 118, 119]
    assert LongDocuments(truncation="tail").keep(pieces, 12) == list(range(110, 120))
    assert LongDocuments(truncation="head").keep(pieces, 12) == list(range(100, 110))
    # head_tokens 0: a quarter of what is kept (Sun et al.'s 128 of 510, roughly).
    assert LongDocuments(truncation="head_tail").keep(pieces, 14) == [100, 101, 102, 111, 112, 113, 114, 115,
                                                                      116, 117, 118, 119]


def test_encode_texts_puts_the_kept_pieces_between_cls_and_sep(wordpiece):
    text = " ".join(["the cat sat on a mat"] * 4)
    pieces = wordpiece.encode_batch([text])[0]
    assert len(pieces) > 12
    ids, lengths, n_pieces, n_kept = encode_texts(wordpiece, [text], 12, LongDocuments("head_tail", head_tokens=3))
    assert ids == [[wordpiece.cls_id, *pieces[:3], *pieces[-7:], wordpiece.sep_id]]
    assert lengths == [[12]] and n_pieces == [len(pieces)] and n_kept == [10]


@pytest.mark.parametrize("n,size,overlap", [(0, 4, 0), (1, 4, 0), (4, 4, 0), (5, 4, 0), (10, 4, 1), (11, 4, 3),
                                            (37, 6, 2), (100, 7, 0)])
def test_chunks_cover_the_document_with_the_given_stride(n, size, overlap):
    spans = chunk_spans(n, size, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(0 < end - start <= size for start, end in spans) or n == 0
    assert [b[0] - a[0] for a, b in zip(spans, spans[1:])] == [size - overlap] * (len(spans) - 1)
    # Neighbours share exactly `overlap` pieces, and every piece is in some chunk.
    assert all(a[1] - b[0] == overlap for a, b in zip(spans, spans[1:]))
    assert set().union(*(range(s, e) for s, e in spans)) == set(range(n))


def test_chunk_spans_by_hand():
    assert chunk_spans(10, 4, 0) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_spans(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert chunk_spans(0, 4, 0) == [(0, 0)]


@pytest.mark.parametrize("truncation,expected", [("head", list(range(0, 7))), ("tail", list(range(13, 20))),
                                                 ("head_tail", [0, 1, 15, 16, 17, 18, 19])])
def test_the_chunk_cap_cuts_the_document_by_the_truncation_strategy(truncation, expected):
    # max_len 6: chunks of 4 pieces, stride 3; two chunks cover 4 + 3 = 7 pieces.
    long = LongDocuments(truncation=truncation, head_tokens=2, chunk_pooling="mean", chunk_overlap=1, max_chunks=2)
    kept = long.keep(list(range(20)), 6)
    assert kept == expected
    assert long.chunk(kept, 6) == [(0, 4), (3, 7)]
    uncapped = LongDocuments(chunk_pooling="mean", chunk_overlap=1, max_chunks=0)
    assert uncapped.keep(list(range(20)), 6) == list(range(20))
    assert uncapped.chunk(list(range(20)), 6)[-2:] == [(15, 19), (18, 20)]  # 7 chunks, the last ends at 20


def test_a_chunked_batch_rows_are_chunks_of_their_documents(wordpiece):
    texts = ["the cat sat", " ".join(["the dog ran under a tree"] * 5), "a bird"]
    examples = LabeledExamples(texts=texts, pairs=None, labels=["0", "1", "0"], source="t", line_numbers=[1, 2, 3])
    long = LongDocuments(chunk_pooling="mean", chunk_overlap=2, max_chunks=0)
    data = encode_long_examples(examples, wordpiece, ["0", "1"], 8, long)
    assert isinstance(data, ChunkedDataset)
    pieces = wordpiece.encode_batch(texts)
    batch = data.batch([2, 1])
    n_long = len(chunk_spans(len(pieces[1]), 6, 2))
    assert batch["chunk_doc"].tolist() == [0] + [1] * n_long
    assert batch["labels"].tolist() == [0, 1]
    rows = [r[m].tolist() for r, m in zip(batch["input_ids"], batch["attention_mask"])]
    assert rows[0] == [wordpiece.cls_id, *pieces[2], wordpiece.sep_id]
    assert [r[1:-1] for r in rows[1:]] == [pieces[1][s:e] for s, e in chunk_spans(len(pieces[1]), 6, 2)]
    cost = encoding_cost(data)
    assert cost["documents"] == 3 and cost["most_chunks"] == n_long
    assert cost["chunks_per_document"] == round((2 + n_long) / 3, 3)
    assert cost["tokens_per_document"] == round(sum(len(r) for r in data.input_ids) / 3, 1)
    assert cost["truncated_fraction"] == 0


def test_long_document_settings_that_leave_no_room_are_one_line_errors(wordpiece):
    with pytest.raises(PretrainerError, match="finetune.head_tokens") as e:
        encode_texts(wordpiece, ["a b"], 12, LongDocuments("head_tail", head_tokens=10))
    assert "\n" not in str(e.value)
    with pytest.raises(PretrainerError, match="finetune.chunk_overlap"):
        encode_texts(wordpiece, ["a b"], 12, LongDocuments(chunk_pooling="max", chunk_overlap=10))
    pair = LabeledExamples(texts=["a"], pairs=["b"], labels=["0"], source="t", line_numbers=[1])
    with pytest.raises(PretrainerError, match="text_pair_field"):
        encode_long_examples(pair, wordpiece, ["0", "1"], 12, LongDocuments(truncation="tail"))
