"""Batches for self-supervised pre-training, cut from a prepared `TokenStream`.

The stream is read as windows ("anchors") at a fixed stride; each epoch visits them in a
seeded permutation, consumed in global batches of batch_size * world_size: rank r takes
items r, r + W, r + 2W, ... of each global batch. A batch depends only on (seed, epoch,
position, rank), so `state_dict()` (epoch and position) is all a resumed run needs to
continue exactly where it stopped. The position counts *global* items, so a checkpoint
written by W processes resumes in any other number without replaying or skipping an item
(with the same global batch, e.g. 2 x 8 -> 1 x 16, the batches are the very same).

Layouts (T = seq_len, all ids long, all masks bool):
- "mlm":     [CLS] seq_len-2 packed tokens [SEP]; documents inside are split by [SEP].
- "clm":     seq_len+1 packed tokens; windows overlap by one so every token is a target once.
- "packed":  seq_len packed tokens as they are, documents split by the separator, nothing added
             (span corruption cuts its inputs and targets from them; word vectors read the
             separators as document borders).
- "mlm_nsp": [CLS] A [SEP] B [SEP] pad...; B follows A in its document (label 0) or comes
             from another document (label 1), 50/50; A and B break at sentence starts.
- "mlm_sop": the same pairs, always two consecutive spans of one document, given in order
             (sentence_order_label 0) or swapped (1), 50/50 (ALBERT's sentence-order prediction).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pretrainer.data.lexicon import Lexicon
from pretrainer.data.shards import TokenStream
from pretrainer.data.tokenizer import TextTokenizer
from pretrainer.errors import PretrainerError

LAYOUTS = ("mlm", "mlm_nsp", "mlm_sop", "clm", "packed")  # what an objective may name as its batch_layout
PAIR_LAYOUTS = ("mlm_nsp", "mlm_sop")
# What each seeded draw is for, so the draws never share a random stream.
DRAW_ORDER, DRAW_SHIFT, DRAW_PAIRS = 0, 1, 2
EVAL_SEED = 20240601  # evaluation draws NSP pairs the same way every time


def seed_words(*values: int) -> list[int]:
    """Seed material for numpy: SeedSequence wants non-negative integers."""
    return [int(v) % 2**64 for v in values]


class EpochSampler:
    """Which items each batch takes: a seeded permutation per epoch, read in global batches.

    A global batch is `batch_size * world_size` consecutive items of the epoch's order;
    rank r takes every W-th of them, starting at r, so the ranks' batches are disjoint and
    together make the batch one process with `batch_size * W` would take. `next_indices()`
    returns this rank's item indices for the next batch; `epoch` and `position` (items of
    the epoch already taken by all ranks together) are the whole resumable state, and the
    same on every rank.

    An epoch uses `(n_items // W) * W` items, so every rank takes the same number of
    batches; with `drop_last` it ends after the last full global batch.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True, lengths: np.ndarray | None = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_size < 1:
            raise PretrainerError(f"batch size must be at least 1, got {batch_size}")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        self.global_batch = batch_size * world_size
        share = n_items // world_size  # items per rank per epoch
        self.batches_per_epoch = (share // batch_size if drop_last
                                  else -(-share // batch_size))
        self.epoch_items = (self.batches_per_epoch * self.global_batch if drop_last
                            else share * world_size)
        self.epoch = 0
        self.position = 0
        self._order_epoch, self._order = -1, np.zeros(0, dtype=np.int64)
        self.lengths = None if lengths is None else np.asarray(lengths)

    def rng(self, *more: int) -> np.random.Generator:
        """A generator fixed by (seed, epoch, *more); the same on every rank unless `more` says rank."""
        return np.random.default_rng(seed_words(self.seed, self.epoch, *more))

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            rng = self.rng(DRAW_ORDER)
            self._order = (rng.permutation(self.n_items) if self.shuffle
                           else np.arange(self.n_items, dtype=np.int64))
            if self.shuffle and self.lengths is not None:
                self._order = group_by_length(self._order, self.lengths, self.global_batch, rng)
            self._order_epoch = self.epoch
        return self._order

    def next_indices(self) -> np.ndarray:
        if self.batches_per_epoch == 0:
            raise RuntimeError("no batches per epoch")
        # A position saved under another world size may leave a stub at the end of the
        # epoch; it is dropped so that every rank still gets a batch (a full one with drop_last).
        if self.position + (self.global_batch if self.drop_last else self.world_size) > self.epoch_items:
            self.epoch, self.position = self.epoch + 1, 0
        end = min(self.position + self.global_batch, self.epoch_items)
        window = self._epoch_order()[self.position:end]
        self.position = end
        return window[self.rank::self.world_size]

    def state_dict(self) -> dict:
        # global_batch: what --resume must keep when the number of processes changes (runs.check_resume)
        return {"epoch": self.epoch, "samples": self.position, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        if "samples" in state:
            self.position = int(state["samples"])
        else:  # written before positions were global: batches of one process
            self.position = int(state["position"]) * self.batch_size


def group_by_length(order: np.ndarray, lengths: np.ndarray, global_batch: int, rng: np.random.Generator,
                    chunk_batches: int = 50) -> np.ndarray:
    """Reorder a shuffled epoch so each global batch holds examples of similar length.

    Padding to the longest example in a batch wastes compute on short-text tasks; sorting
    within chunks of `chunk_batches` batches (then shuffling whole batches) keeps the
    epoch random while batches stay tight. A function of (order, rng) only, so resume is exact.
    """
    chunk = global_batch * chunk_batches
    pieces = [part[np.argsort(-lengths[part], kind="stable")]
              for part in (order[i:i + chunk] for i in range(0, len(order), chunk))]
    order = np.concatenate(pieces) if pieces else order
    n_full = len(order) // global_batch
    batches = order[:n_full * global_batch].reshape(n_full, global_batch)[rng.permutation(n_full)]
    return np.concatenate([batches.reshape(-1), order[n_full * global_batch:]])


class _Windows:
    """Geometry of the anchors: `span` tokens needed from an anchor, `stride` between anchors."""

    def __init__(self, length: int, span: int, stride: int):
        self.stride = stride
        self.count = (length - span) // stride + 1 if length >= span else 0
        # Tokens left over after `count` windows; a random shift of up to this much moves the
        # window borders every epoch without changing how many windows there are.
        self.slack = length - span - (self.count - 1) * stride if self.count else 0


class BatchBuilder:
    """Turns anchor offsets into a batch of one layout (`kind`)."""

    def __init__(self, stream: TokenStream, seq_len: int, kind: str, tokenizer: TextTokenizer,
                 whole_word: bool = False, lexicon: Lexicon | None = None):
        if kind not in LAYOUTS:
            raise PretrainerError(f"unknown batch layout {kind!r}; choose one of: {', '.join(LAYOUTS)}")
        min_len = {"mlm": 3, "clm": 1, "mlm_nsp": 5, "mlm_sop": 5, "packed": 2}[kind]
        if seq_len < min_len:
            raise PretrainerError(f"train.seq_len = {seq_len} is too short for {kind} (needs >= {min_len})")
        self.stream, self.seq_len, self.kind = stream, seq_len, kind
        # A lexicon's units are built on word starts, so it implies them.
        self.tokenizer, self.whole_word, self.lexicon = tokenizer, whole_word or lexicon is not None, lexicon
        if kind == "mlm":
            self.span = self.stride = seq_len - 2
        elif kind == "clm":
            self.span, self.stride = seq_len + 1, seq_len
        elif kind == "packed":
            self.span = self.stride = seq_len
        else:
            # An NSP anchor only picks the document and sentence A starts in; pairs stay inside documents.
            self.span, self.stride = 1, seq_len - 3
            self.doc_ends = stream.doc_ends()
            starts = stream.sentence_starts
            self.sentence_starts = np.asarray(starts if starts is not None else stream.doc_starts)

    def windows(self) -> _Windows:
        return _Windows(len(self.stream), self.span, self.stride)

    def build(self, starts: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        if self.kind == "clm":
            return self.clm(starts, self.seq_len + 1)
        if self.kind == "packed":
            return self.clm(starts, self.seq_len)
        if self.kind == "mlm":
            return self.mlm(starts, self.seq_len - 2)
        return self.mlm_nsp(starts, rng)

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """(B, length) int64 tokens from each start."""
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)
        return np.asarray(self.stream.tokens[index], dtype=np.int64)

    def clm(self, starts: np.ndarray, length: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.gather(starts, length))}  # (B, T+1)

    def mlm(self, starts: np.ndarray, body_len: int) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        ids = np.empty((len(starts), body_len + 2), dtype=np.int64)  # (B, T)
        ids[:, 0] = tok.cls_id
        ids[:, 1:-1] = self.gather(starts, body_len)
        ids[:, -1] = tok.sep_id
        return self._finish(ids, np.ones(ids.shape, dtype=bool))

    def _finish(self, ids: np.ndarray, attention: np.ndarray, **extra: np.ndarray) -> dict[str, torch.Tensor]:
        batch = {"input_ids": torch.from_numpy(ids),
                 "attention_mask": torch.from_numpy(attention),
                 "special_tokens_mask": torch.from_numpy(self.tokenizer.special_table[ids])}
        if self.whole_word:
            word_starts = self.tokenizer.word_starts(ids)
            batch["word_starts"] = torch.from_numpy(word_starts)
            if self.lexicon is not None:  # found phrases are single masking units (data/lexicon.py)
                batch["unit_starts"] = torch.from_numpy(self.lexicon.unit_starts(ids, word_starts))
        for name, value in extra.items():
            batch[name] = torch.from_numpy(value)
        return batch

    def mlm_nsp(self, anchors: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        tok, tokens = self.tokenizer, self.stream.tokens
        size = len(anchors)
        ids = np.full((size, self.seq_len), tok.pad_id, dtype=np.int64)  # (B, T)
        types = np.zeros((size, self.seq_len), dtype=np.int64)
        attention = np.zeros((size, self.seq_len), dtype=bool)
        labels = np.zeros(size, dtype=np.int64)
        swap = self.kind == "mlm_sop"
        for row, anchor in enumerate(anchors):
            (a0, a1), (b0, b1), labels[row] = self._pair(int(anchor), rng, consecutive=swap)
            if swap and rng.random() < 0.5:  # sentence order: the same two spans, swapped
                (a0, a1), (b0, b1), labels[row] = (b0, b1), (a0, a1), 1
            len_a, len_b = a1 - a0, b1 - b0
            n = len_a + len_b + 3
            ids[row, 0] = tok.cls_id
            ids[row, 1:1 + len_a] = tokens[a0:a1]
            ids[row, 1 + len_a] = tok.sep_id
            ids[row, 2 + len_a:2 + len_a + len_b] = tokens[b0:b1]
            ids[row, n - 1] = tok.sep_id
            types[row, len_a + 2:n] = 1
            attention[row, :n] = True
        label_name = "sentence_order_label" if swap else "next_sentence_label"
        return self._finish(ids, attention, token_type_ids=types, **{label_name: labels})

    def _pair(self, anchor: int, rng: np.random.Generator,
              consecutive: bool = False) -> tuple[tuple[int, int], tuple[int, int], int]:
        """Token ranges of A and B, and the label (0 = B follows A, 1 = B is from another document);
        `consecutive` asks for B following A always (a one-token document then gives an empty B)."""
        budget = self.seq_len - 3
        starts, ends, sentences = self.stream.doc_starts, self.doc_ends, self.sentence_starts
        doc = int(np.searchsorted(starts, anchor, side="right")) - 1
        doc_start, doc_end = int(starts[doc]), int(ends[doc])
        anchor = min(anchor, doc_end - 1)  # an anchor on the separator belongs to the document before
        a0 = int(sentences[np.searchsorted(sentences, anchor, side="right") - 1])
        region_end = min(a0 + budget, doc_end)
        if region_end - a0 < 2:  # A's sentence is the document's last token: reach back for room
            a0 = max(doc_start, region_end - budget)
        want_random = rng.random() < 0.5 and not consecutive
        if region_end - a0 < 2:  # a one-token document cannot hold both halves
            split, want_random = region_end, not consecutive
        else:
            inside = sentences[np.searchsorted(sentences, a0, side="right"):
                               np.searchsorted(sentences, region_end, side="left")]
            if not len(inside):  # one long sentence: split between words, not inside one
                word_starts = self.tokenizer.word_starts(self.stream.tokens[a0 + 1:region_end])
                inside = a0 + 1 + np.flatnonzero(word_starts)
            split = int(rng.choice(inside)) if len(inside) else int(rng.integers(a0 + 1, region_end))
        b_len = max(region_end - split, 1)
        if not want_random:
            return (a0, split), (split, region_end), 0
        if len(starts) > 1:
            other = int(rng.integers(len(starts) - 1))
            other += other >= doc  # any document but this one
        else:  # a one-document held-out set: the best "random" B is elsewhere in the same document
            other = doc
        first = np.searchsorted(sentences, starts[other], side="left")
        last = np.searchsorted(sentences, ends[other], side="left")
        b0 = int(sentences[rng.integers(first, last)]) if last > first else int(starts[other])
        return (a0, split), (b0, min(b0 + b_len, int(ends[other]))), 1


class SamplerLoader:
    """Base of the resumable loaders: their whole state is their EpochSampler's (`self.sampler`)."""

    sampler: EpochSampler

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class PackedLMLoader(SamplerLoader):
    """Infinite, resumable, rank-aware pre-training batches; see the module doc for layouts."""

    def __init__(self, stream: TokenStream, batch_size: int, seq_len: int, kind: str,
                 tokenizer: TextTokenizer, seed: int = 0, rank: int = 0, world_size: int = 1,
                 whole_word: bool = False, lexicon: Lexicon | None = None):
        if kind == "mlm_nsp" and stream.num_documents < 2:
            raise PretrainerError("next-sentence prediction needs at least 2 training documents "
                                  f"(the corpus has {stream.num_documents})")
        self.builder = BatchBuilder(stream, seq_len, kind, tokenizer, whole_word, lexicon)
        self.windows = self.builder.windows()
        self.sampler = EpochSampler(self.windows.count, batch_size, seed, rank, world_size)
        if self.sampler.batches_per_epoch == 0:
            raise PretrainerError(
                f"the training corpus is too small: {len(stream):,} tokens give {self.windows.count} "
                f"sequences of train.seq_len = {seq_len}, fewer than train.batch_size = {batch_size}"
                + (f" x {world_size} processes" if world_size > 1 else ""))
        self.kind, self.batch_size, self.seq_len = kind, batch_size, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.tokens_per_batch = batch_size * seq_len
        self.batches_per_epoch = self.sampler.batches_per_epoch

    def __next__(self) -> dict[str, torch.Tensor]:
        picked = self.sampler.next_indices()
        # The shift depends on the epoch only: all ranks must cut the same windows.
        shift = int(self.sampler.rng(DRAW_SHIFT).integers(self.windows.slack + 1))
        starts = shift + picked * self.windows.stride
        pair_rng = self.sampler.rng(DRAW_PAIRS, self.rank, self.sampler.position)
        return self.builder.build(starts, pair_rng)


def eval_batches(stream: TokenStream, batch_size: int, seq_len: int, kind: str, tokenizer: TextTokenizer,
                 max_batches: int = 0, whole_word: bool = True,
                 lexicon: Lexicon | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Held-out batches in stream order, the same every time; at most max_batches (0 = all).

    MLM batches carry `word_starts` by default: callers evaluating a whole-word objective
    need not say so, and the lookup is cheap.

    Windows start at 0 and do not shift. For mlm, clm and packed a final shorter sequence holds the
    tokens after the last full window, so every held-out token is scored even when the
    held-out set is smaller than one window.
    """
    builder = BatchBuilder(stream, seq_len, kind, tokenizer, whole_word, lexicon)
    windows = builder.windows()
    n_batches = -(-windows.count // batch_size)
    limit = max_batches if max_batches > 0 else None
    produced = 0
    for b in range(n_batches):
        if limit is not None and produced >= limit:
            return
        starts = np.arange(b * batch_size, min((b + 1) * batch_size, windows.count)) * windows.stride
        yield builder.build(starts, np.random.default_rng(seed_words(EVAL_SEED, b)))
        produced += 1
    if limit is not None and produced >= limit or kind in PAIR_LAYOUTS:
        return
    covered = windows.count * windows.stride + (1 if kind == "clm" and windows.count else 0)
    left = len(stream) - covered
    if kind == "mlm" and left >= 1 and not tokenizer.special_table[stream.tokens[covered:]].all():
        yield builder.mlm(np.array([covered]), left)
    elif kind == "packed" and left >= 2:
        yield builder.clm(np.array([covered]), left)
    elif kind == "clm" and left >= 1:
        # The token before the tail is its first input, so its first token is still a target.
        start = covered - 1 if covered else 0
        if len(stream) - start >= 2:
            yield builder.clm(np.array([start]), len(stream) - start)
