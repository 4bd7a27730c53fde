"""Texts longer than the model's input: which word pieces a truncated example keeps, or the
chunks a document is cut into.

Truncation (finetune.truncation, registered in TRUNCATIONS): `head` keeps the first pieces,
`tail` the last, `head_tail` the first `head_tokens` and the rest from the end (Sun et al. 2019,
"How to Fine-Tune BERT for Text Classification?": 128 + 382 pieces did best on IMDB).

Chunking (finetune.chunk_pooling = mean or max): the pieces are cut into consecutive windows of
max_len - 2 ([CLS] and [SEP] around each), `overlap` pieces shared by neighbours. Each window is
one chunk row the backbone encodes; the classifier pools the chunks' vectors back into one per
document (models/layers.pool_chunks). With `max_chunks`, a document longer than that many
chunks is first cut to the pieces they cover, by the truncation strategy.

A chunked dataset stores each document's chunks flattened into one id list (so its length is
the tokens encoded for that document: what length-grouping and throughput should count) and
the chunk lengths to cut it back; a batch of documents becomes one batch of chunk rows plus
`chunk_doc`, the document each row belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pretrainer.data.labeled import EncodedDataset, label_indices, padded
from pretrainer.data.readers import LabeledExamples
from pretrainer.data.tokenizer import TextTokenizer
from pretrainer.errors import PretrainerError
from pretrainer.registry import TRUNCATIONS

SPECIALS = 2  # [CLS] text [SEP] (byte-level BPE: <|endoftext|> on both sides)
# The [finetune] keys that say how a run reads long texts: what evaluation, predict, prune and
# quantize take from a run's config.toml.
LONG_DOCUMENT_KEYS = ("truncation", "head_tokens", "chunk_pooling", "chunk_overlap", "max_chunks")


@TRUNCATIONS.register("head")
def keep_head(pieces: list[int], budget: int, head_tokens: int) -> list[int]:
    return pieces[:budget]


@TRUNCATIONS.register("tail")
def keep_tail(pieces: list[int], budget: int, head_tokens: int) -> list[int]:
    return pieces[len(pieces) - budget:] if len(pieces) > budget else pieces


@TRUNCATIONS.register("head_tail")
def keep_head_tail(pieces: list[int], budget: int, head_tokens: int) -> list[int]:
    """The first `head_tokens` pieces and the last `budget - head_tokens` (a review's verdict is
    often in its last sentences)."""
    if len(pieces) <= budget:
        return pieces
    return pieces[:head_tokens] + pieces[len(pieces) - (budget - head_tokens):]


@dataclass(frozen=True)
class LongDocuments:
    """How a text longer than one input is read (the [finetune] keys of the same names)."""

    truncation: str = "head"
    head_tokens: int = 0  # head_tail: pieces from the start (0: a quarter of the budget)
    chunk_pooling: str = "none"  # none: one truncated input per text; mean / max: chunks
    chunk_overlap: int = 0
    max_chunks: int = 0  # 0: as many chunks as the text needs

    @classmethod
    def of(cls, ft) -> "LongDocuments":
        """The settings of a FinetuneConfig."""
        return cls(**{key: getattr(ft, key) for key in LONG_DOCUMENT_KEYS})

    @property
    def chunked(self) -> bool:
        return self.chunk_pooling != "none"

    def text_budget(self, max_len: int) -> int:
        """Word pieces one document keeps: one input's worth, or what max_chunks chunks cover
        (0: no limit)."""
        window = max_len - SPECIALS
        if not self.chunked:
            return window
        if not self.max_chunks:
            return 0
        return window + (self.max_chunks - 1) * (window - self.chunk_overlap)

    def head_size(self, budget: int) -> int:
        return self.head_tokens or budget // 4

    def check(self, max_len: int) -> None:
        """One-line errors, naming the key, for settings that leave no room at this input length
        (finetune.max_len may be cut further by the method, e.g. soft prompts)."""
        window = max_len - SPECIALS
        if window < 1:
            raise PretrainerError(f"config key 'finetune.max_len' = {max_len} leaves no room for text")
        if self.chunked and not 0 <= self.chunk_overlap < window:
            raise PretrainerError(f"config key 'finetune.chunk_overlap' = {self.chunk_overlap} must be below the "
                                  f"{window} word pieces a chunk holds (finetune.max_len - {SPECIALS})")
        budget = self.text_budget(max_len)
        if self.truncation == "head_tail" and budget and not 0 < self.head_size(budget) < budget:
            raise PretrainerError(f"config key 'finetune.head_tokens' = {self.head_tokens} must be from 1 to "
                                  f"{budget - 1}: head_tail keeps {budget} word pieces of a long text "
                                  f"and needs some from its end")

    def keep(self, pieces: list[int], max_len: int) -> list[int]:
        """The pieces of one text that are encoded."""
        budget = self.text_budget(max_len)
        if not budget or len(pieces) <= budget:
            return pieces
        return TRUNCATIONS.get(self.truncation)(pieces, budget, self.head_size(budget))

    def chunk(self, pieces: list[int], max_len: int) -> list[tuple[int, int]]:
        """[start, end) windows of `pieces` (already kept), one per chunk."""
        return chunk_spans(len(pieces), max_len - SPECIALS, self.chunk_overlap)


def chunk_spans(n: int, size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Windows of at most `size` over n pieces, each starting `size - overlap` after the last,
    the last one ending at n; an empty text is one empty window."""
    stride = size - overlap
    return [(start, min(start + size, n)) for start in range(0, max(n - overlap, 1), stride)]


@dataclass
class ChunkedDataset(EncodedDataset):
    """EncodedDataset whose input_ids[i] are document i's chunks, each [CLS] pieces [SEP],
    put end to end; chunk_lengths[i] cuts them apart again."""

    chunk_lengths: list[list[int]] | None = None

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The chunks of the chosen documents as rows padded to the longest, `chunk_doc` (N,)
        the position in `indices` of each row's document, and one label per document."""
        rows, owner = [], []
        for position, i in enumerate(indices):
            start = 0
            for length in self.chunk_lengths[i]:
                rows.append(self.input_ids[i][start:start + length])
                owner.append(position)
                start += length
        ids, attention = padded(rows, self.pad_id)
        batch = {"input_ids": ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(ids),
                 "chunk_doc": torch.tensor(owner, dtype=torch.long),
                 "labels": torch.tensor([self.labels[i] for i in indices], dtype=torch.long)}
        if self.teacher_logits is not None:
            batch["teacher_logits"] = self.teacher_logits[torch.as_tensor(list(indices), dtype=torch.long)]
        return batch


def encode_texts(tokenizer: TextTokenizer, texts: Sequence[str], max_len: int,
                 long: LongDocuments) -> tuple[list[list[int]], list[list[int]], list[int], list[int]]:
    """(ids, chunk lengths, pieces in the text, pieces kept) per text: ids are one [CLS] kept
    [SEP] input, or the chunks end to end. What training, evaluation and `pretrainer predict`
    all encode with."""
    long.check(max_len)
    all_ids, all_lengths, n_pieces, n_kept = [], [], [], []
    for pieces in tokenizer.encode_batch(texts):
        kept = long.keep(pieces, max_len)
        spans = long.chunk(kept, max_len) if long.chunked else [(0, len(kept))]
        ids: list[int] = []
        for start, end in spans:
            ids += [tokenizer.cls_id, *kept[start:end], tokenizer.sep_id]
        all_ids.append(ids)
        all_lengths.append([end - start + SPECIALS for start, end in spans])
        n_pieces.append(len(pieces))
        n_kept.append(len(kept))
    return all_ids, all_lengths, n_pieces, n_kept


def encode_long_examples(examples: LabeledExamples, tokenizer: TextTokenizer, label_names: Sequence[str],
                         max_len: int, long: LongDocuments) -> EncodedDataset:
    """`encode_examples` for single texts read the `long` way: a ChunkedDataset when chunking."""
    if examples.pairs is not None:
        raise PretrainerError("config key 'finetune.truncation' / 'finetune.chunk_pooling': text pairs "
                              "(finetune.data.text_pair_field) are truncated longest-first only; use "
                              "truncation = \"head\" and chunk_pooling = \"none\"")
    labels = label_indices(examples, label_names)
    ids, lengths, n_pieces, n_kept = encode_texts(tokenizer, examples.texts, max_len, long)
    common = dict(input_ids=ids, token_type_ids=[[0] * len(row) for row in ids], labels=labels,
                  label_names=list(label_names), pad_id=tokenizer.pad_id, text_pieces=n_pieces, kept_pieces=n_kept)
    if long.chunked:
        return ChunkedDataset(**common, chunk_lengths=lengths)
    return EncodedDataset(**common)


def encoding_cost(dataset: EncodedDataset) -> dict:
    """What reading a split cost per document: chunks, tokens encoded (specials included, padding
    not), and the word pieces of the text against those kept."""
    chunks = [len(c) for c in dataset.chunk_lengths] if getattr(dataset, "chunk_lengths", None) else [1] * len(dataset)
    tokens = np.array([len(ids) for ids in dataset.input_ids])
    out = {"documents": len(dataset), "chunks_per_document": round(float(np.mean(chunks)), 3),
           "most_chunks": int(max(chunks)), "tokens_per_document": round(float(tokens.mean()), 1)}
    if dataset.text_pieces is not None and dataset.kept_pieces is not None:
        pieces, kept = np.array(dataset.text_pieces), np.array(dataset.kept_pieces)
        out["pieces_per_document"] = round(float(pieces.mean()), 1)
        out["pieces_kept_per_document"] = round(float(kept.mean()), 1)
        out["truncated_fraction"] = round(float(np.mean(kept < pieces)), 4)
    return out
