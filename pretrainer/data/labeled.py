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

    def __len__(self) -> int:
        return len(self.labels)


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


def collate(dataset: EncodedDataset, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to the longest of them."""
    lengths = [len(dataset.input_ids[i]) for i in indices]
    width = max(lengths)
    ids = np.full((len(indices), width), dataset.pad_id, dtype=np.int64)  # (B, T)
    types = np.zeros((len(indices), width), dtype=np.int64)
    for row, (i, n) in enumerate(zip(indices, lengths)):
        ids[row, :n] = dataset.input_ids[i]
        types[row, :n] = dataset.token_type_ids[i]
    attention = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention),
             "token_type_ids": torch.from_numpy(types),
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
        return collate(self.dataset, self.indices[self.sampler.next_indices()].tolist())


def iterate_once(dataset: EncodedDataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every example once, in order (evaluation)."""
    for first in range(0, len(dataset), batch_size):
        yield collate(dataset, range(first, min(first + batch_size, len(dataset))))
