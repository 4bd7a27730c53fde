"""`pretrainer lexicon`: build the phrase file of knowledge-enhanced masking (objective.lexicon).

Two sources:
- collocations of a corpus: word n-grams (n = 2 or 3) that occur at least min_count times and
  whose parts go together far more often than chance ("special effects", "new york", "waste of
  time"). The score is the pointwise mutual information of the n-gram's weakest split into two
  parts, log p(a b) / (p(a) p(b)) for a bigram and min(log p(abc) / (p(a) p(bc)),
  log p(abc) / (p(ab) p(c))) for a trigram: a plain trigram PMI against its three words would
  rank "plot special effects" above "special effects" (it inherits the pair's surprise),
  while the split "plot | special effects" is at chance. Words are runs of letters and digits
  (an apostrophe inside one is kept), lowercased; n-grams never cross punctuation. An n-gram
  that starts or ends with one of the `stopwords` most frequent words of the corpus ("of the",
  "the film") is left out: such words make frequent pairs without making phrases.
- the entities of a tagged file (CoNLL / WikiANN, IOB2): every entity span's words, joined
  by spaces, that occurs at least min_count times.

Either way the file holds one phrase per line, most salient first (highest PMI, or most
frequent entity), at most max_phrases of them. With `tokenizer` (a tokenizer.json, vocab.txt
or run directory), phrases it cannot encode without [UNK] are left out, since a lexicon that
holds one is refused when a run reads it (data/lexicon.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pretrainer.config import load_config, resolve_section, DataConfig
from pretrainer.data.conll import read_conll
from pretrainer.data.readers import read_documents
from pretrainer.data.text_config import TextDataConfig
from pretrainer.data.tokenizer import TextTokenizer, load_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.evaluation.entities import entity_spans
from pretrainer.io import atomic_write_text

CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")
WORD = re.compile(r"\w+(?:['’]\w+)*")
BREAK = re.compile(r"[^\w\s'’]+")  # punctuation: an n-gram never runs across it


@dataclass(frozen=True)
class LexiconOptions:
    max_n: int = 3
    min_count: int = 5
    min_pmi: float = 3.0
    stopwords: int = 50
    max_phrases: int = 10000
    max_documents: int = 0
    entities: bool = False
    token_prefix: str = ""
    tokenizer: str = ""

    def check(self) -> None:
        if not 2 <= self.max_n <= 3:
            raise PretrainerError(f"--max-n = {self.max_n} must be 2 or 3 (the longest collocation, in words)")
        if self.min_count < 1:
            raise PretrainerError(f"--min-count = {self.min_count} must be >= 1")
        if not math.isfinite(self.min_pmi):
            raise PretrainerError(f"--min-pmi = {self.min_pmi} must be a finite number")
        for flag, value in (("--stopwords", self.stopwords), ("--max-documents", self.max_documents)):
            if value < 0:
                raise PretrainerError(f"{flag} = {value} must be >= 0")
        if self.max_phrases < 1:
            raise PretrainerError(f"--max-phrases = {self.max_phrases} must be >= 1")


def chunks(text: str) -> Iterator[list[str]]:
    """Lowercased word lists of `text`, split at punctuation."""
    for piece in BREAK.split(text.lower()):
        words = WORD.findall(piece)
        if words:
            yield words


def collocations(read: Callable[[], Iterable[str]], options: LexiconOptions) -> list[tuple[str, float, int]]:
    """[(phrase, pmi, count)] best first; `read()` yields the documents (called twice: once for
    the word counts, once for the n-grams of words frequent enough to make one)."""
    words: Counter[str] = Counter()
    for text in read():
        for chunk in chunks(text):
            words.update(chunk)
    total = sum(words.values())
    if not total:
        return []
    stop = {w for w, _ in words.most_common(options.stopwords)}
    # An n-gram cannot occur more often than its rarest word: only those words are counted.
    usable = {w for w, c in words.items() if c >= options.min_count}
    # Every bigram of usable words (the parts of trigrams); trigrams only with usable edges.
    grams: Counter[tuple[str, ...]] = Counter()
    for text in read():
        for chunk in chunks(text):
            for n in range(2, options.max_n + 1):
                for i in range(len(chunk) - n + 1):
                    gram = tuple(chunk[i:i + n])
                    if not all(w in usable for w in gram) or (n > 2 and (gram[0] in stop or gram[-1] in stop)):
                        continue
                    grams[gram] += 1

    def count(part: tuple[str, ...]) -> int:
        return words[part[0]] if len(part) == 1 else grams[part]

    found = []
    for gram, n_gram in grams.items():
        if n_gram < options.min_count or gram[0] in stop or gram[-1] in stop:
            continue
        # log [c(gram) / N] / ([c(left) / N] [c(right) / N]) for the weakest split
        pmi = min(math.log(n_gram * total / (count(gram[:k]) * count(gram[k:]))) for k in range(1, len(gram)))
        if pmi >= options.min_pmi:
            found.append((" ".join(gram), pmi, n_gram))
    found.sort(key=lambda item: (-item[1], -item[2], item[0]))
    return found[:options.max_phrases]


def entities(path: Path, options: LexiconOptions) -> list[tuple[str, int]]:
    """[(entity, count)], most frequent first: the entity spans of a tagged (IOB2) file."""
    counts: Counter[str] = Counter()
    for sentence in read_conll(path, token_prefix=options.token_prefix, hint_key="SOURCE"):
        for _kind, start, end in entity_spans(sentence.tags):
            counts[" ".join(sentence.words[start:end])] += 1
    kept = [(e, c) for e, c in counts.items() if c >= options.min_count and e.strip()]
    kept.sort(key=lambda item: (-item[1], item[0]))
    return kept[:options.max_phrases]


def encodable(phrases: list[str], tokenizer: TextTokenizer) -> tuple[list[str], int]:
    """(the phrases `tokenizer` encodes to tokens without [UNK], how many it does not)."""
    unk = tokenizer.token_to_id("[UNK]")
    kept = [p for p, ids in zip(phrases, tokenizer.encode_batch(phrases)) if ids and unk not in ids]
    return kept, len(phrases) - len(kept)


def corpus_reader(source: Path, max_documents: int) -> Callable[[], Iterator[str]]:
    """What `collocations` reads: a config's data.train files (read as its [data] says), or one
    corpus file (format from its extension)."""
    if source.suffix.lower() in CONFIG_SUFFIXES:
        data = resolve_section(DataConfig, load_config(source).data)
        if not isinstance(data, TextDataConfig) or not data.train:
            raise PretrainerError(f"{source}: its [data] names no text corpus (data.train)")
        files, cfg = data.train, data
    else:
        files, cfg = [str(source)], TextDataConfig(train=[str(source)])
    for path in files:
        if not Path(path).is_file():
            raise PretrainerError(f"{path}: file not found")

    def read() -> Iterator[str]:
        for path in files:
            for i, text in enumerate(read_documents(path, cfg)):
                if max_documents and i >= max_documents:
                    break
                yield text
    return read


def build_lexicon(source: str, out: str, options: LexiconOptions = LexiconOptions(),
                  log: Callable[[str], None] = print) -> list[str]:
    """Write the lexicon of `source` to `out` (one phrase per line); returns the phrases."""
    options.check()
    path = Path(source)
    if not path.is_file():
        raise PretrainerError(f"{source}: file not found")
    if options.entities:
        phrases = [entity for entity, _ in entities(path, options)]
        what = f"entities seen at least {options.min_count} times"
    else:
        phrases = [phrase for phrase, _, _ in collocations(corpus_reader(path, options.max_documents), options)]
        what = f"collocations of up to {options.max_n} words with count >= {options.min_count} and PMI >= {options.min_pmi}"
    dropped = 0
    if options.tokenizer:
        phrases, dropped = encodable(phrases, load_tokenizer(options.tokenizer))
    if not phrases:
        raise PretrainerError(f"{source}: no {what}; lower --min-count" + ("" if options.entities else " or --min-pmi"))
    atomic_write_text(out, "".join(f"{p}\n" for p in phrases))
    left_out = f"; left out {dropped:,} the tokenizer cannot encode" if dropped else ""
    log(f"wrote {len(phrases):,} {what.split(' ', 1)[0]} to {out} (first: {', '.join(phrases[:5])}){left_out}")
    return phrases
