"""The "segments" layout: whole sentences of one document per row, never across documents."""

import numpy as np
import pytest

from pretrainer.data.segments import SegmentLoader, segment_bounds, segment_eval_batches
from pretrainer.errors import PretrainerError


@pytest.mark.parametrize("body_len", [6, 12, 40])
def test_segments_are_whole_sentences_of_one_document(stream, body_len):
    starts, ends = segment_bounds(stream, body_len)
    doc_of = np.searchsorted(stream.doc_starts, starts, side="right") - 1
    assert (np.searchsorted(stream.doc_starts, ends - 1, side="right") - 1 == doc_of).all()  # one document
    assert ((ends - starts >= 1) & (ends - starts <= body_len)).all()
    assert (starts[1:] >= ends[:-1]).all()  # no overlap
    # Every token but the document separators is in exactly one segment.
    covered = np.zeros(len(stream), dtype=int)
    for s, e in zip(starts, ends):
        covered[s:e] += 1
    separators = np.zeros(len(stream), dtype=bool)
    separators[stream.doc_ends()] = True
    assert (covered[~separators] == 1).all() and (covered[separators] == 0).all()
    # A segment starts at a sentence start, or continues a sentence longer than a segment.
    sentence = np.isin(starts, stream.sentence_starts) | np.isin(starts, stream.doc_starts)
    assert (sentence | np.isin(starts, ends)).all()
    if body_len == 40:  # long enough for the corpus' sentences: segments start sentences, several per segment
        assert sentence.all() and len(starts) < len(stream.sentence_starts)


def test_batches_are_padded_rows_of_cls_segment_sep(stream, wordpiece):
    loader = SegmentLoader(stream, 8, 16, wordpiece, seed=0)
    batch = next(loader)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 8 and ids.shape[1] <= 16
    lengths = attention.sum(1)
    assert (ids[:, 0] == wordpiece.cls_id).all()
    assert all(ids[r, lengths[r] - 1] == wordpiece.sep_id for r in range(8))
    assert (ids[~attention] == wordpiece.pad_id).all()
    marks = (ids == wordpiece.cls_id) | (ids == wordpiece.sep_id) | ~attention
    assert (batch["special_tokens_mask"] == marks).all()


def test_ranks_take_disjoint_segments(stream, wordpiece):
    single = SegmentLoader(stream, 8, 16, wordpiece, seed=1)
    ranks = [SegmentLoader(stream, 4, 16, wordpiece, seed=1, rank=r, world_size=2) for r in range(2)]
    whole = {tuple(row.tolist()) for row in next(single)["input_ids"]}
    halves = [tuple(row[row != wordpiece.pad_id].tolist()) for loader in ranks for row in next(loader)["input_ids"]]
    assert {tuple(t for t in row if t != wordpiece.pad_id) for row in whole} == set(halves)


def test_eval_segments_are_the_same_every_time(stream, wordpiece):
    one = list(segment_eval_batches(stream, 8, 16, wordpiece, max_batches=3))
    two = list(segment_eval_batches(stream, 8, 16, wordpiece, max_batches=3))
    assert len(one) == 3 and all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(one, two))


def test_too_few_segments_for_a_batch(wordpiece, stream_of):
    with pytest.raises(PretrainerError, match="train.batch_size"):
        SegmentLoader(stream_of(["The cat sat."] * 3), 8, 16, wordpiece)
