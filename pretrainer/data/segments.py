"""The "segments" batch layout: one short text per row, for sentence-embedding objectives (SimCSE).

A packed MLM window runs across document borders, which is fine for predicting tokens but
not for "these two vectors are the same text". Here the unit is a *segment*: consecutive
whole sentences of one document, packed greedily up to seq_len - 2 tokens (a sentence longer
than that is cut into pieces of that length). With a short train.seq_len a segment is about
one sentence (the SimCSE paper's unit); with a long one it is a paragraph. Segments never
overlap and never cross a document, so every text is seen once per epoch.

Rows are `[CLS] segment [SEP]` padded to the batch's longest row (attention_mask marks the
real tokens). Training batches come from the same seeded, rank-aware, resumable
`EpochSampler` as the packed layouts; held-out batches are the held-out segments in order.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pretrainer.data.loader import EpochSampler, SamplerLoader
from pretrainer.data.shards import TokenStream
from pretrainer.data.tokenizer import TextTokenizer
from pretrainer.errors import PretrainerError


def segment_bounds(stream: TokenStream, body_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends), each (S,) int64: the segments of `stream` (see the module doc)."""
    if body_len < 1:
        raise PretrainerError(f"train.seq_len = {body_len + 2} is too short for segments (needs >= 3)")
    sentences = stream.sentence_starts if stream.sentence_starts is not None else stream.doc_starts
    bounds = np.union1d(np.asarray(sentences, dtype=np.int64), np.asarray(stream.doc_starts, dtype=np.int64))
    doc_starts, doc_ends = np.asarray(stream.doc_starts, dtype=np.int64), stream.doc_ends()
    starts: list[int] = []
    ends: list[int] = []
    for doc_start, doc_end in zip(doc_starts.tolist(), doc_ends.tolist()):
        if doc_end <= doc_start:
            continue
        lo, hi = np.searchsorted(bounds, [doc_start, doc_end], side="left")
        sentence_ends = [*bounds[lo + 1:hi].tolist(), doc_end]  # each sentence ends where the next starts
        begin = end = doc_start
        for stop in sentence_ends:
            if stop - begin > body_len:  # this sentence does not fit: close the segment before it
                if end > begin:
                    starts.append(begin)
                    ends.append(end)
                    begin = end
                while stop - begin > body_len:  # a sentence longer than a segment, in pieces
                    starts.append(begin)
                    ends.append(begin + body_len)
                    begin += body_len
            end = stop
        if end > begin:
            starts.append(begin)
            ends.append(end)
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


class SegmentBuilder:
    """Segment indices -> a padded batch of `[CLS] segment [SEP]` rows."""

    def __init__(self, stream: TokenStream, seq_len: int, tokenizer: TextTokenizer):
        self.stream, self.tokenizer = stream, tokenizer
        self.starts, self.ends = segment_bounds(stream, seq_len - 2)

    def __len__(self) -> int:
        return len(self.starts)

    def build(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        lengths = self.ends[indices] - self.starts[indices]
        width = int(lengths.max()) + 2 if len(indices) else 2
        ids = np.full((len(indices), width), tok.pad_id, dtype=np.int64)  # (B, T)
        attention = np.zeros(ids.shape, dtype=bool)
        for row, (start, length) in enumerate(zip(self.starts[indices].tolist(), lengths.tolist())):
            ids[row, 0] = tok.cls_id
            ids[row, 1:1 + length] = self.stream.tokens[start:start + length]
            ids[row, 1 + length] = tok.sep_id
            attention[row, :length + 2] = True
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention),
                "special_tokens_mask": torch.from_numpy(tok.special_table[ids])}


class SegmentLoader(SamplerLoader):
    """Infinite, resumable, rank-aware batches of segments."""

    def __init__(self, stream: TokenStream, batch_size: int, seq_len: int, tokenizer: TextTokenizer,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.builder = SegmentBuilder(stream, seq_len, tokenizer)
        self.sampler = EpochSampler(len(self.builder), batch_size, seed, rank, world_size)
        if self.sampler.batches_per_epoch == 0:
            raise PretrainerError(
                f"the training corpus is too small: it holds {len(self.builder)} segments of at most "
                f"train.seq_len = {seq_len} tokens, fewer than train.batch_size = {batch_size}"
                + (f" x {world_size} processes" if world_size > 1 else ""))
        self.batch_size, self.seq_len = batch_size, seq_len
        self.batches_per_epoch = self.sampler.batches_per_epoch

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.builder.build(self.sampler.next_indices())


def segment_eval_batches(stream: TokenStream, batch_size: int, seq_len: int, tokenizer: TextTokenizer,
                         max_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Held-out segments in order, batch_size at a time (the last batch may be smaller);
    at most max_batches batches (0 = all)."""
    builder = SegmentBuilder(stream, seq_len, tokenizer)
    n_batches = -(-len(builder) // batch_size)
    if max_batches > 0:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        yield builder.build(np.arange(b * batch_size, min((b + 1) * batch_size, len(builder))))
