"""Labeled examples as model input: encoding, label subsets, and classification batches.

Batches are padded to the longest example in the batch (not to max_len), which keeps
short-sentence tasks such as SST-2 cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from pretrainer.data.loader import EpochSampler, SamplerLoader, seed_words
from pretrainer.data.readers import LabeledExamples
from pretrainer.data.tokenizer import TextTokenizer
from pretrainer.errors import PretrainerError


@dataclass
class EncodedDataset:
    """Token ids per example ([CLS] a [SEP] (b [SEP])), token types, and label indices."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int]
    label_names: list[str]
    pad_id: int
    teacher_logits: torch.Tensor | None = None  # (N, K): a teacher's logits per example (distillation)
    # Word pieces of each text, and of them those encoded (the cost report, data/long_documents.py).
    text_pieces: list[int] | None = None
    kept_pieces: list[int] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The model inputs of these examples (a chunked dataset batches its chunks)."""
        return collate(self, indices)


def infer_label_names(examples: LabeledExamples) -> list[str]:
    """The label set found in the examples, sorted (numerically when every label is an integer)."""
    names = set(examples.labels)
    if all(_is_int(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def encode_examples(examples: LabeledExamples, tokenizer: TextTokenizer, label_names: Sequence[str],
                    max_len: int) -> EncodedDataset:
    """Tokenize and truncate to max_len; a label outside label_names names its file and line."""
    labels = label_indices(examples, label_names)
    ids, types = tokenizer.encode_for_classification(examples.texts, examples.pairs, max_len=max_len)
    return EncodedDataset(input_ids=ids, token_type_ids=types, labels=labels,
                          label_names=list(label_names), pad_id=tokenizer.pad_id)


def label_indices(examples: LabeledExamples, label_names: Sequence[str]) -> list[int]:
    """Each example's label as an index into label_names; an unknown label names its file and line."""
    index = {name: i for i, name in enumerate(label_names)}
    labels = []
    for i, label in enumerate(examples.labels):
        if label not in index:
            raise PretrainerError(f"{examples.where(i)}: label {label!r} is not in the label set "
                                  f"{list(label_names)}")
        labels.append(index[label])
    return labels


def stratified_subset(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Sorted indices keeping round(fraction * n) examples of each class (at least one)."""
    if not 0 < fraction <= 1:
        raise PretrainerError(f"config key 'finetune.label_fraction' must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction == 1:
        return list(range(len(labels)))
    rng = np.random.default_rng(seed_words(seed))
    kept = []
    for label in np.unique(labels):  # sorted, so the draws do not depend on example order
        members = np.flatnonzero(labels == label)
        keep = min(len(members), max(1, round(fraction * len(members))))
        kept.append(rng.choice(members, size=keep, replace=False))
    return sorted(int(i) for i in np.concatenate(kept)) if kept else []


def padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded to the longest with `pad`: (ids (B, T) long, attention mask (B, T) bool)."""
    lengths = [len(r) for r in rows]
    width = max(lengths)
    ids = np.full((len(rows), width), pad, dtype=np.int64)  # (B, T)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        ids[i, :n] = row
    attention = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    return torch.from_numpy(ids), torch.from_numpy(attention)


def collate(dataset: EncodedDataset, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to the longest of them."""
    ids, attention = padded([dataset.input_ids[i] for i in indices], dataset.pad_id)
    types, _ = padded([dataset.token_type_ids[i] for i in indices], 0)
    batch = {"input_ids": ids, "attention_mask": attention, "token_type_ids": types,
             "labels": torch.tensor([dataset.labels[i] for i in indices], dtype=torch.long)}
    if dataset.teacher_logits is not None:
        batch["teacher_logits"] = dataset.teacher_logits[torch.as_tensor(list(indices), dtype=torch.long)]
    return batch


class ClassificationLoader(SamplerLoader):
    """Infinite, resumable, rank-aware batches over `indices` (default: all examples).

    Each epoch is a seeded permutation (or the given order when shuffle=False), grouped so
    that a batch holds examples of similar length (less padding); the last batch of an
    epoch may be smaller.
    """

    def __init__(self, dataset: EncodedDataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, indices: Sequence[int] | None = None,
                 group_by_length: bool = True):
        self.dataset = dataset
        self.indices = np.asarray(indices if indices is not None else range(len(dataset)), dtype=np.int64)
        lengths = np.array([len(dataset.input_ids[i]) for i in self.indices]) if group_by_length else None
        self.sampler = EpochSampler(len(self.indices), batch_size, seed, rank, world_size,
                                    shuffle=shuffle, drop_last=False, lengths=lengths)
        if self.sampler.batches_per_epoch == 0:
            raise PretrainerError(f"no training examples to batch ({len(self.indices)} examples"
                                  + (f" for {world_size} processes)" if world_size > 1 else ")"))
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.steps_per_epoch = self.sampler.batches_per_epoch
        mean_len = float(np.mean([len(dataset.input_ids[i]) for i in self.indices]))
        self.tokens_per_batch = round(batch_size * mean_len)  # an average: batches are padded per batch

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.dataset.batch(self.indices[self.sampler.next_indices()].tolist())


def iterate_once(dataset: EncodedDataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every example once, in order (evaluation)."""
    for first in range(0, len(dataset), batch_size):
        yield dataset.batch(range(first, min(first + batch_size, len(dataset))))
