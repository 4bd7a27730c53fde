"""Source/target pairs encoded for an encoder–decoder (task = "generation").

The encoder reads the source's word pieces and an end token, as span corruption's inputs end;
the decoder reads the target shifted right behind the start token ([PAD], as in T5) and learns
the target and its end token (teacher forcing). Sources longer than the input length keep their
head (a news article's lead says most of what its headline says); targets longer than
`max_target_len` are cut or refused by `on_long_target`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from pretrainer.data.collators import IGNORE_INDEX
from pretrainer.data.readers import TextPairs
from pretrainer.errors import PretrainerError


@dataclass
class Decoding:
    """How a split's sources are decoded when it is scored (finetune.generation)."""

    max_target_len: int = 32  # decoder positions, the start token excluded: the end token included
    num_beams: int = 1
    length_penalty: float = 1.0


@dataclass
class TextPairDataset:
    """Encoded pairs: `input_ids` the encoder's (end token last), `target_ids` the decoder's
    targets (end token last); the texts stay for scoring and for the generated-examples file."""

    input_ids: list[list[int]]
    target_ids: list[list[int]]
    sources: list[str]
    targets: list[str]
    ids: list[str | None]
    pad_id: int
    tokenizer: object = field(repr=False)
    decoding: Decoding = field(default_factory=Decoding)
    truncated_sources: int = 0
    truncated_targets: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """input_ids / attention_mask (B, S); decoder_input_ids and labels (B, T), the labels
        IGNORE_INDEX past each target's end."""
        rows = [self.input_ids[i] for i in indices]
        targets = [self.target_ids[i] for i in indices]
        S, T = max(map(len, rows)), max(map(len, targets))
        ids = np.full((len(rows), S), self.pad_id, dtype=np.int64)
        labels = np.full((len(rows), T), IGNORE_INDEX, dtype=np.int64)
        decoder = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        for b, (row, target) in enumerate(zip(rows, targets)):
            ids[b, :len(row)] = row
            labels[b, :len(target)] = target
            decoder[b, 1:len(target)] = target[:-1]  # position 0 stays the start token ([PAD])
        lengths = np.array([len(r) for r in rows])
        mask = np.arange(S)[None, :] < lengths[:, None]
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64)),
                "decoder_input_ids": torch.from_numpy(decoder), "labels": torch.from_numpy(labels)}


def encode_sources(texts: Sequence[str], tokenizer, max_len: int, decoding: Decoding) -> TextPairDataset:
    """Sources alone, to decode (`pretrainer predict`): each target is just the end token."""
    eos = tokenizer.eos_id
    ids = tokenizer.encode_batch(list(texts)) if texts else []
    return TextPairDataset(input_ids=[row[:max_len - 1] + [eos] for row in ids], target_ids=[[eos]] * len(ids),
                           sources=list(texts), targets=[""] * len(ids), ids=[None] * len(ids),
                           pad_id=tokenizer.pad_id, tokenizer=tokenizer, decoding=decoding,
                           truncated_sources=sum(len(row) > max_len - 1 for row in ids))


def encode_text_pairs(pairs: TextPairs, tokenizer, max_len: int, decoding: Decoding,
                      on_long_target: str = "truncate") -> TextPairDataset:
    """Word pieces of each source (at most max_len - 1, then the end token) and target (at most
    decoding.max_target_len - 1, then the end token)."""
    eos = tokenizer.eos_id
    sources = tokenizer.encode_batch(pairs.sources) if len(pairs) else []
    targets = tokenizer.encode_batch(pairs.targets) if len(pairs) else []
    input_ids, target_ids = [], []
    cut_sources = cut_targets = 0
    for i, (source, target) in enumerate(zip(sources, targets)):
        if not target:
            raise PretrainerError(f"{pairs.where(i)}: the target encodes to no tokens")
        if len(target) > decoding.max_target_len - 1:
            if on_long_target == "error":
                raise PretrainerError(f"{pairs.where(i)}: the target is {len(target) + 1} tokens with its end "
                                      f"token, longer than config key 'finetune.generation.max_target_len' = "
                                      f"{decoding.max_target_len} (raise it, or set on_long_target = \"truncate\")")
            cut_targets += 1
        cut_sources += len(source) > max_len - 1
        input_ids.append(source[:max_len - 1] + [eos])
        target_ids.append(target[:decoding.max_target_len - 1] + [eos])
    return TextPairDataset(input_ids=input_ids, target_ids=target_ids, sources=list(pairs.sources),
                           targets=list(pairs.targets), ids=list(pairs.ids), pad_id=tokenizer.pad_id,
                           tokenizer=tokenizer, decoding=decoding, truncated_sources=cut_sources,
                           truncated_targets=cut_targets)
