"""Tagged sentences (CoNLL files) as model input for token classification (NER).

A CoNLL file holds one word per line, `word<TAB>tag` (or whitespace-separated columns,
the tag last), with a blank line between sentences; `-DOCSTART-` lines are skipped.
Tags are IOB2 (O, B-TYPE, I-TYPE).

Words are encoded pre-split, so every sub-token knows its word. Only a word's first
sub-token carries the word's label (the others and the specials get IGNORE_INDEX), which
is how BERT was fine-tuned for NER; predictions are read back from the same positions.
A batch also carries the gold tag of every word, including words lost to truncation, so
evaluation can score whole sentences (a word without a sub-token is predicted "O").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from pretrainer.data.collators import IGNORE_INDEX
from pretrainer.data.labeled import ClassificationLoader
from pretrainer.data.loader import seed_words
from pretrainer.data.readers import ReadStats, _Lines
from pretrainer.data.tokenizer import TextTokenizer
from pretrainer.errors import PretrainerError

_IOB2_TAG = re.compile(r"O|[BI]-\S+")

# The capitalisation an uncased tokenizer erases, the strongest cue for names (Paris, paris,
# PARIS). Index 0 marks [CLS], [SEP] and padding; every sub-token of a word gets its shape.
WORD_SHAPES = ("special", "uncased", "lower", "Title", "UPPER", "miXed")


class TaggedSentence(NamedTuple):
    words: list[str]
    tags: list[str]
    where: str  # `file:line` of the sentence's first word, for error messages


def read_conll(path: str | os.PathLike, token_prefix: str = "", on_bad_utf8: str = "error",
               hint_key: str = "finetune.data", on_control_chars: str = "strip",
               stats: ReadStats | None = None) -> list[TaggedSentence]:
    """The sentences of a CoNLL file, with `token_prefix` (WikiANN's `en:`) removed from each word.

    The input policies of data/readers.py apply: a line that is not valid UTF-8 (`on_bad_utf8`)
    and control characters (`on_control_chars`), counted in `stats`."""
    lines = _Lines(path, on_bad_utf8, stats if stats is not None else ReadStats(), hint_key, on_control_chars)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    first_line = 0

    def end_sentence() -> None:
        if words:
            sentences.append(TaggedSentence(list(words), list(tags), f"{lines.path}:{first_line}"))
            words.clear()
            tags.clear()

    for line in lines:
        line = lines.clean(line.rstrip("\r\n"))
        if not line.strip():
            end_sentence()
            continue
        if line.startswith("-DOCSTART-"):
            continue
        # A tab separates columns when there is one, so a word may hold spaces.
        columns = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
        if len(columns) < 2:
            raise PretrainerError(f"{lines.path}:{lines.number}: expected `word<TAB>tag`, got one column "
                                  f"{line.strip()!r}")
        tag = columns[-1]
        if not _IOB2_TAG.fullmatch(tag):
            raise PretrainerError(f"{lines.path}:{lines.number}: {tag!r} is not an IOB2 tag "
                                  f"(O, B-TYPE or I-TYPE)")
        if not words:
            first_line = lines.number
        words.append(columns[0].removeprefix(token_prefix) if token_prefix else columns[0])
        tags.append(tag)
    end_sentence()
    return sentences


def word_shape(word: str) -> int:
    """The word's index in WORD_SHAPES; "uncased" is a word without cased letters (123, --, 東京)."""
    cased = [c for c in word if c.islower() or c.isupper()]
    if not cased:
        return 1
    if all(c.islower() for c in cased):
        return 2
    if len(cased) > 1 and all(c.isupper() for c in cased):
        return 4
    if cased[0].isupper() and all(c.islower() for c in cased[1:]):
        return 3
    return 5


def infer_tag_names(sentences: Sequence[TaggedSentence]) -> list[str]:
    """The tags found, sorted, with "O" first (so label id 0 means "no entity")."""
    found = {tag for s in sentences for tag in s.tags}
    return ["O"] * ("O" in found) + sorted(found - {"O"})


def sentence_subset(n_sentences: int, fraction: float, n_labels: int, seed: int) -> list[int]:
    """Sorted indices of a seeded random subset: exactly n_labels sentences when n_labels > 0,
    else round(fraction * n) of them (at least one)."""
    if n_labels < 0:
        raise PretrainerError(f"config key 'finetune.n_labels' must be >= 0, got {n_labels}")
    if n_labels > n_sentences:
        raise PretrainerError(f"config key 'finetune.n_labels' = {n_labels} is more than the "
                              f"{n_sentences:,} training sentences")
    if not n_labels and not 0 < fraction <= 1:
        raise PretrainerError(f"config key 'finetune.label_fraction' must be in (0, 1], got {fraction}")
    keep = n_labels or min(n_sentences, max(1, round(fraction * n_sentences)))
    if keep == n_sentences:
        return list(range(n_sentences))
    rng = np.random.default_rng(seed_words(seed))
    return sorted(int(i) for i in rng.choice(n_sentences, size=keep, replace=False))


@dataclass
class EncodedTagging:
    """Per sentence: [CLS] sub-tokens [SEP] ids, which word each first sub-token labels, word tags."""

    input_ids: list[list[int]]
    label_word: list[list[int]]  # per token: the word whose label it carries, -1 for none
    case_ids: list[list[int]]  # per token: its word's shape (WORD_SHAPES index), 0 for specials
    word_labels: list[list[int]]  # per word: its tag's index in label_names (every word, even truncated)
    label_names: list[str]
    pad_id: int
    # per sentence: a teacher's logits per word (W, K), NaN rows for words it did not see (distillation)
    teacher_logits: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_words(tokenizer: TextTokenizer, sentences: Sequence[Sequence[str]],
                 max_len: int) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """([CLS] ids [SEP] truncated to max_len, label_word, case_ids) per sentence of pre-split words."""
    if max_len <= 2:
        raise PretrainerError(f"max_len = {max_len} leaves no room for text (needs > 2)")
    if tokenizer.kind == "bytebpe":
        # Byte-level BPE sees the space before a word ("Ġword"); give words the space they had in text.
        sentences = [[w if i == 0 else " " + w for i, w in enumerate(words)] for words in sentences]
    encodings = tokenizer.tokenizer.encode_batch([list(words) for words in sentences],
                                                 is_pretokenized=True, add_special_tokens=False)
    budget = max_len - 2
    all_ids, all_label_word, all_case_ids = [], [], []
    for words, encoding in zip(sentences, encodings):
        word_ids = encoding.word_ids[:budget]
        shapes = [word_shape(w) for w in words]
        label_word, case_ids = [-1], [0]  # [CLS]
        for t, word in enumerate(word_ids):
            first = word is not None and (t == 0 or word_ids[t - 1] != word)
            label_word.append(word if first else -1)
            case_ids.append(0 if word is None else shapes[word])
        label_word.append(-1)  # [SEP]
        case_ids.append(0)
        all_ids.append([tokenizer.cls_id, *encoding.ids[:budget], tokenizer.sep_id])
        all_label_word.append(label_word)
        all_case_ids.append(case_ids)
    return all_ids, all_label_word, all_case_ids


def encode_sentences(sentences: Sequence[TaggedSentence], tokenizer: TextTokenizer,
                     label_names: Sequence[str], max_len: int) -> EncodedTagging:
    """Tokenize and align labels; a tag outside label_names names its file and line."""
    index = {name: i for i, name in enumerate(label_names)}
    word_labels = []
    for sentence in sentences:
        unknown = [tag for tag in sentence.tags if tag not in index]
        if unknown:
            raise PretrainerError(f"{sentence.where}: tag {unknown[0]!r} is not in the label set "
                                  f"{list(label_names)}")
        word_labels.append([index[tag] for tag in sentence.tags])
    ids, label_word, case_ids = encode_words(tokenizer, [s.words for s in sentences], max_len)
    return EncodedTagging(input_ids=ids, label_word=label_word, case_ids=case_ids, word_labels=word_labels,
                          label_names=list(label_names), pad_id=tokenizer.pad_id)


def collate_tagging(dataset: EncodedTagging, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad the chosen sentences to the longest of them.

    labels (B, T): the word's tag at first sub-tokens, IGNORE_INDEX elsewhere; label_word
    (B, T): that word's index, -1 elsewhere; case_ids (B, T): the word's shape, 0 for
    specials and padding; word_labels (B, W): every word's tag, padded with IGNORE_INDEX.
    """
    indices = list(indices)
    lengths = [len(dataset.input_ids[i]) for i in indices]
    n_words = [len(dataset.word_labels[i]) for i in indices]
    width, words_width = max(lengths), max(n_words)
    ids = np.full((len(indices), width), dataset.pad_id, dtype=np.int64)  # (B, T)
    label_word = np.full((len(indices), width), -1, dtype=np.int64)  # (B, T)
    case_ids = np.zeros((len(indices), width), dtype=np.int64)  # (B, T)
    word_labels = np.full((len(indices), words_width), IGNORE_INDEX, dtype=np.int64)  # (B, W)
    for row, (i, n, w) in enumerate(zip(indices, lengths, n_words)):
        ids[row, :n] = dataset.input_ids[i]
        label_word[row, :n] = dataset.label_word[i]
        case_ids[row, :n] = dataset.case_ids[i]
        word_labels[row, :w] = dataset.word_labels[i]
    rows = np.arange(len(indices))[:, None]
    labels = np.where(label_word >= 0, word_labels[rows, np.maximum(label_word, 0)], IGNORE_INDEX)
    attention = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention),
             "token_type_ids": torch.zeros_like(torch.from_numpy(ids)),
             "labels": torch.from_numpy(labels), "label_word": torch.from_numpy(label_word),
             "case_ids": torch.from_numpy(case_ids),
             "word_labels": torch.from_numpy(word_labels)}
    if dataset.teacher_logits is not None:
        batch.update(_teacher_targets(dataset, indices, batch["label_word"]))
    return batch


def _teacher_targets(dataset: EncodedTagging, indices: list[int], label_word: torch.Tensor) -> dict:
    """teacher_logits (B, T, K) at each word's first sub-token, from the per-word logits, and
    teacher_mask (B, T): where there is one (a word the teacher saw)."""
    K = len(dataset.label_names)
    logits = torch.zeros(*label_word.shape, K)
    for row, i in enumerate(indices):
        words = dataset.teacher_logits[i]  # (W, K)
        cols = (label_word[row] >= 0).nonzero(as_tuple=True)[0]
        logits[row, cols] = words[label_word[row, cols]]
    mask = ~torch.isnan(logits).any(-1) & (label_word >= 0)
    return {"teacher_logits": logits.nan_to_num(0.0), "teacher_mask": mask}


class TaggingLoader(ClassificationLoader):
    """ClassificationLoader's infinite, resumable, length-grouped batches, of tagged sentences."""

    def __next__(self) -> dict[str, torch.Tensor]:
        return collate_tagging(self.dataset, self.indices[self.sampler.next_indices()].tolist())


def iterate_tagging_once(dataset: EncodedTagging, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every sentence once, in order (evaluation)."""
    for first in range(0, len(dataset), batch_size):
        yield collate_tagging(dataset, range(first, min(first + batch_size, len(dataset))))
