"""A lexicon of phrases and entities, found in token ids, for knowledge-enhanced masking (ERNIE).

The file (`objective.lexicon`) holds one phrase per line, UTF-8 ("new york", "special
effects", "tom hanks"). Each phrase is encoded with the run's tokenizer; a batch then
carries `unit_starts`: its `word_starts` with the inner word starts of every phrase found in
the row cleared, so a masking that picks whole units picks a found phrase whole or not at
all. A phrase is found only on word borders (it starts a word and the token after it starts
one), longest first, left to right, without overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pretrainer.data.tokenizer import TextTokenizer
from pretrainer.errors import PretrainerError

_END = -1  # trie key: a phrase ends at this node


@dataclass
class Lexicon:
    """Phrases as token-id sequences, held in a trie (nested dicts keyed by id)."""

    phrases: list[tuple[int, ...]]
    trie: dict = field(default_factory=dict)

    def __post_init__(self):
        for phrase in self.phrases:
            node = self.trie
            for token in phrase:
                node = node.setdefault(token, {})
            node[_END] = True

    def __len__(self) -> int:
        return len(self.phrases)

    def find(self, ids: np.ndarray, word_starts: np.ndarray) -> list[tuple[int, int]]:
        """[(start, end), ...] of the phrases found in one row `ids` (T,), given its word starts."""
        found = []
        T = len(ids)
        i = 0
        starts = np.flatnonzero(word_starts)
        k = 0
        while k < len(starts):
            i = int(starts[k])
            node, j, end = self.trie, i, -1
            while j < T and int(ids[j]) in node:
                node = node[int(ids[j])]
                j += 1
                if _END in node and (j == T or word_starts[j]):
                    end = j  # the longest match so far that ends on a word border
            if end > 0:
                found.append((i, end))
                k = int(np.searchsorted(starts, end))  # no overlaps: go on after the phrase
            else:
                k += 1
        return found

    def unit_starts(self, ids: np.ndarray, word_starts: np.ndarray) -> np.ndarray:
        """(B, T) bool: where a masking unit begins: a word outside the phrases found, or a phrase."""
        units = np.array(word_starts, dtype=bool, copy=True)
        for row in range(len(ids)):
            for start, end in self.find(ids[row], units[row]):
                units[row, start + 1:end] = False
        return units


def load_lexicon(path: str | Path, tokenizer: TextTokenizer, key: str = "objective.lexicon") -> Lexicon:
    """Read and encode a lexicon file; one-line errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise PretrainerError(f"config key '{key}' = '{path}': file not found")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise PretrainerError(f"{path}:{line}: not valid UTF-8 (byte {e.start})") from None
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise PretrainerError(f"{path}:{number}: empty line; a lexicon holds one phrase per line")
        texts.append(line.strip())
    if not texts:
        raise PretrainerError(f"{path}: holds no phrases (one per line)")
    unk = tokenizer.token_to_id("[UNK]")
    phrases = []
    for number, (text, ids) in enumerate(zip(texts, tokenizer.encode_batch(texts)), start=1):
        if not ids or (unk is not None and unk in ids):
            raise PretrainerError(f"{path}:{number}: the tokenizer cannot encode {text!r} "
                                  f"({'no tokens' if not ids else 'gives [UNK]'})")
        phrases.append(tuple(ids))
    return Lexicon(sorted(set(phrases)))
