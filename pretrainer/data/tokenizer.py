"""`TextTokenizer`: a `tokenizers.Tokenizer` plus the special ids the rest of the library needs.

Two kinds are built here from `tokenizers` components:
- "wordpiece" (BERT): BERT normalizer and pre-tokenizer, WordPiece with "##" continuations,
  special tokens [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
- "bytebpe" (GPT-2): byte-level BPE with one special token, <|endoftext|>, which serves as
  document separator, begin/end of text and padding.
A `vocab.txt` loads as a BERT WordPiece tokenizer that gives the ids Hugging Face's
`BertTokenizerFast` gives for the same vocabulary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from pretrainer.config import TokenizerConfig
from pretrainer.errors import PretrainerError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
WORDPIECE_SPECIALS = [PAD, UNK, CLS, SEP, MASK]  # list order = ids when training
ENDOFTEXT = "<|endoftext|>"
SENTINEL = "<extra_id_{}>"  # T5's span-corruption sentinels, numbered from 0
BYTEBPE_MIN_VOCAB = 257  # every byte, and <|endoftext|>
# A text longer than this is tokenized in pieces cut before whitespace (see `text_pieces`), so
# memory does not grow with the length of one line: the Rust encoder keeps ~100 bytes per
# character of the text it is given (a 10 MB line took ~1 GB).
PIECE_CHARS = 1 << 15
ENCODE_GROUP_CHARS = 1 << 20  # characters handed to the Rust encoder at once
SENTENCE_END_CHARS = set(".!?")
CLOSING_CHARS = set("\"')]”’")


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, source: str = "tokenizer"):
        # Truncation/padding baked into a loaded tokenizer.json would silently cut documents.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0

        def require(token: str) -> int:
            if token not in vocab:
                raise PretrainerError(f"{source}: the tokenizer has no {token} token")
            return vocab[token]

        if isinstance(tokenizer.model, models.WordPiece):
            self.kind = "wordpiece"
            self.pad_id, self.cls_id, self.sep_id = require(PAD), require(CLS), require(SEP)
            self.mask_id: int | None = require(MASK)
            self.unk_id: int | None = require(UNK)
            self.bos_id, self.eos_id = self.cls_id, self.sep_id
            self.doc_separator_id = self.sep_id
            continuation = tokenizer.model.continuing_subword_prefix
            starts_word = [not token.startswith(continuation) for token in vocab]
            bare = [token.removeprefix(continuation) for token in vocab]
        elif isinstance(tokenizer.model, models.BPE):
            self.kind = "bytebpe"
            eot = require(ENDOFTEXT)
            # GPT-style: one token opens, closes, separates and pads.
            self.pad_id = self.cls_id = self.sep_id = self.bos_id = self.eos_id = eot
            self.doc_separator_id = eot
            self.mask_id = None
            self.unk_id = None
            # Byte-level BPE marks a leading space as "Ġ"; a newline ("Ċ") also ends the word before.
            starts_word = [token.startswith(("Ġ", "Ċ")) for token in vocab]
            bare = [token.removeprefix("Ġ") for token in vocab]
        else:
            raise PretrainerError(f"{source}: unsupported tokenizer model {type(tokenizer.model).__name__} "
                                  f"(use a WordPiece or byte-level BPE tokenizer)")
        # Sentinels, if any: <extra_id_0>, <extra_id_1>, ... while the vocabulary has them.
        self.sentinel_ids: list[int] = []
        while SENTINEL.format(len(self.sentinel_ids)) in vocab:
            self.sentinel_ids.append(vocab[SENTINEL.format(len(self.sentinel_ids))])
        # UNK is an ordinary, predictable token; these four (and sentinels) are never MLM targets.
        self.special_ids = sorted({self.pad_id, self.cls_id, self.sep_id, *self.sentinel_ids}
                                  | ({self.mask_id} if self.mask_id is not None else set()))
        # word_starts is a table lookup: (vocab_size,) bool, True where a token begins a word.
        self._word_start_table = np.zeros(self.vocab_size, dtype=bool)
        self._word_start_table[list(vocab.values())] = starts_word
        self._word_start_table[self.special_ids] = True
        # (vocab_size,) bool, True for tokens like ".", "?!", '."' that end a sentence.
        self._sentence_end_table = np.zeros(self.vocab_size, dtype=bool)
        self._sentence_end_table[list(vocab.values())] = [
            bool(set(text) & SENTENCE_END_CHARS) and set(text) <= SENTENCE_END_CHARS | CLOSING_CHARS
            for text in bare]
        self._sentence_end_table[self.special_ids] = False
        # (vocab_size,) bool, True at the special ids: a fast special-tokens mask.
        self.special_table = np.zeros(self.vocab_size, dtype=bool)
        self.special_table[self.special_ids] = True

    def __repr__(self) -> str:
        return f"TextTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "tokenizer.json"
        self.tokenizer.save(str(path))
        return path

    def encode_batch(self, texts: Sequence[str], add_special: bool = False) -> list[list[int]]:
        """Token ids per text; runs on the Rust thread pool. With add_special: [CLS] ... [SEP].

        Texts longer than PIECE_CHARS are encoded piece by piece (`text_pieces`), at most
        ENCODE_GROUP_CHARS characters at a time, with the same ids as whole."""
        if not texts:
            return []
        if max(map(len, texts)) <= PIECE_CHARS and sum(map(len, texts)) <= ENCODE_GROUP_CHARS:
            ids = [e.ids for e in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]
        else:
            ids = self._encode_in_pieces(texts)
        if add_special:
            return [[self.cls_id, *i, self.sep_id] for i in ids]
        return ids

    def _encode_in_pieces(self, texts: Sequence[str]) -> list[list[int]]:
        ids: list[list[int]] = [[] for _ in texts]
        group: list[tuple[int, str]] = []
        size = 0

        def flush() -> None:
            encodings = self.tokenizer.encode_batch_fast([piece for _, piece in group], add_special_tokens=False)
            for (owner, _), encoding in zip(group, encodings):
                ids[owner].extend(encoding.ids)
            group.clear()

        for owner, text in enumerate(texts):
            for piece in text_pieces(text):
                if size + len(piece) > ENCODE_GROUP_CHARS and group:
                    flush()
                    size = 0
                group.append((owner, piece))
                size += len(piece)
        if group:
            flush()
        return ids

    def encode_for_classification(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                                  max_len: int = 128) -> tuple[list[list[int]], list[list[int]]]:
        """([CLS] a [SEP] (b [SEP]) ids, token type ids), truncated longest-first to max_len."""
        n_special = 3 if pairs is not None else 2
        if max_len <= n_special:
            raise PretrainerError(f"max_len = {max_len} leaves no room for text (needs > {n_special})")
        budget = max_len - n_special
        firsts = self.encode_batch(texts)
        seconds = self.encode_batch(pairs) if pairs is not None else [None] * len(firsts)
        all_ids, all_types = [], []
        for a, b in zip(firsts, seconds):
            if b is None:
                ids = [self.cls_id, *a[:budget], self.sep_id]
                types = [0] * len(ids)
            else:
                keep_a, keep_b = truncate_longest_first(len(a), len(b), budget)
                ids = [self.cls_id, *a[:keep_a], self.sep_id, *b[:keep_b], self.sep_id]
                types = [0] * (keep_a + 2) + [1] * (keep_b + 1)
            all_ids.append(ids)
            all_types.append(types)
        return all_ids, all_types

    def decode(self, ids, skip_special: bool = False) -> str:
        return self.tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=skip_special)

    def word_starts(self, ids) -> np.ndarray:
        """Bool array shaped like ids: True where a token begins a word (special tokens do)."""
        return self._word_start_table[np.asarray(ids)]

    def ends_sentence(self, ids) -> np.ndarray:
        """Bool array shaped like ids: True for sentence-ending punctuation tokens."""
        return self._sentence_end_table[np.asarray(ids)]

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)


def text_pieces(text: str, max_chars: int | None = None) -> Iterator[str]:
    """`text` in consecutive pieces of at most `max_chars` (default PIECE_CHARS), each cut just
    before a space, tab or newline that is followed by a non-space character.

    Both tokenizers split words at such a place (BERT's pre-tokenizer at any whitespace;
    byte-level BPE's GPT-2 pattern starts a new pre-token at the last whitespace before a
    word), so the pieces' ids put together are the ids of the whole text. A stretch of more
    than max_chars / 2 characters without such a place is cut at max_chars: the only case
    where a long text tokenizes differently (a word that long is one [UNK] for WordPiece).
    """
    max_chars = max_chars or PIECE_CHARS
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = end
        while True:
            cut = max(text.rfind(space, start + max_chars // 2, cut) for space in " \n\t")
            if cut < 0 or not text[cut + 1].isspace():
                break
        cut = end if cut <= start else cut
        yield text[start:cut]
        start = cut
    yield text[start:]


def truncate_longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """How many tokens of a and b to keep: trim the longer one first (ties trim b), like HF."""
    if len_a + len_b <= budget:
        return len_a, len_b
    half_b = budget // 2
    half_a = budget - half_b
    if len_a <= half_a:
        return len_a, budget - len_a
    if len_b <= half_b:
        return budget - len_b, len_b
    return half_a, half_b


def bert_pipeline(tokenizer: Tokenizer, lowercase: bool) -> Tokenizer:
    """Attach BERT's normalizer, pre-tokenizer and decoder to a WordPiece model."""
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=lowercase, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> TextTokenizer:
    """Train a tokenizer of kind `cfg.kind` on `texts` (an iterator is fine: it is streamed).

    A `cfg.vocab_size` below what the kind needs is an error naming the key and the minimum,
    never silently raised: byte-level BPE needs 257 (256 bytes + <|endoftext|>), WordPiece
    the 5 special tokens plus every character of the corpus' alphabet (known after reading it).
    Long texts are fed to the trainer in pieces (`text_pieces`), which count the same words."""
    if cfg.kind == "bytebpe" and cfg.vocab_size < BYTEBPE_MIN_VOCAB:
        raise PretrainerError(f"config key 'tokenizer.vocab_size' = {cfg.vocab_size} is below the minimum for "
                              f"tokenizer.kind = \"bytebpe\": {BYTEBPE_MIN_VOCAB} (256 bytes + {ENDOFTEXT})")
    texts = (piece for text in texts for piece in text_pieces(text))
    if cfg.kind == "wordpiece":
        tokenizer = bert_pipeline(Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##")),
                                  cfg.lowercase)
        trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                            special_tokens=WORDPIECE_SPECIALS, continuing_subword_prefix="##",
                                            limit_alphabet=1000, show_progress=False)
    elif cfg.kind == "bytebpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                      special_tokens=[ENDOFTEXT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        raise PretrainerError(f"config key 'tokenizer.kind' must be wordpiece or bytebpe, got {cfg.kind!r}")
    tokenizer.train_from_iterator(texts, trainer)
    if cfg.kind == "wordpiece":
        _renumber_wordpiece(tokenizer)
        trained = tokenizer.get_vocab_size(with_added_tokens=True)
        if trained > cfg.vocab_size:  # the trainer keeps the whole alphabet, whatever the size asked
            raise PretrainerError(f"config key 'tokenizer.vocab_size' = {cfg.vocab_size} is below the minimum "
                                  f"for this corpus: {trained} ({len(WORDPIECE_SPECIALS)} special tokens + "
                                  f"{trained - len(WORDPIECE_SPECIALS)} for its characters)")
    return with_sentinels(TextTokenizer(tokenizer, source=f"trained {cfg.kind} tokenizer"), cfg.sentinels)


def with_sentinels(tokenizer: TextTokenizer, n: int) -> TextTokenizer:
    """`tokenizer` with at least `n` sentinels: the missing ones are appended as special tokens,
    highest number first, so <extra_id_0> takes the last id (T5's layout). A tokenizer that has
    enough is returned as it is, so runs saved without sentinels load unchanged."""
    have = len(tokenizer.sentinel_ids)
    if n <= have:
        return tokenizer
    inner = Tokenizer.from_str(tokenizer.tokenizer.to_str())
    inner.add_special_tokens([SENTINEL.format(i) for i in reversed(range(have, n))])
    return TextTokenizer(inner, source="tokenizer with sentinels")


def _renumber_wordpiece(tokenizer: Tokenizer) -> None:
    """Give a trained WordPiece vocabulary ids that depend only on its tokens.

    WordPieceTrainer numbers tokens of equal count in hash-map order, so training twice on the
    same corpus gave the same tokens under different ids (and different results from the same
    seed). WordPiece matches by string, so any numbering tokenizes the same: keep the specials
    where they are and number the rest in string order.
    """
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    specials = sorted(WORDPIECE_SPECIALS, key=vocab.__getitem__)
    if [vocab[t] for t in specials] != list(range(len(specials))):
        raise RuntimeError(f"WordPieceTrainer put the special tokens at {[vocab[t] for t in specials]}")
    rest = sorted(t for t in vocab if t not in WORDPIECE_SPECIALS)
    tokenizer.model = models.WordPiece({t: i for i, t in enumerate(specials + rest)}, unk_token=UNK,
                                       continuing_subword_prefix="##")


def tokenizer_file(path: str | os.PathLike) -> Path:
    """The file `load_tokenizer(path)` reads: path itself, or its tokenizer.json / vocab.txt."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).is_file():
                return path / name
        raise PretrainerError(f"{path}: no tokenizer.json or vocab.txt in this directory")
    if not path.is_file():
        raise PretrainerError(f"{path}: tokenizer file not found")
    return path


def load_tokenizer(path: str | os.PathLike, lowercase: bool = True) -> TextTokenizer:
    """A tokenizer.json, a BERT vocab.txt (`lowercase` applies to it), or a directory holding either."""
    path = tokenizer_file(path)
    if path.suffix == ".txt":
        return _load_vocab_txt(path, lowercase)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception with a serde message
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PretrainerError(f"{path}: not a valid tokenizer.json ({reason})") from None
    return TextTokenizer(tokenizer, source=str(path))


def _load_vocab_txt(path: Path, lowercase: bool) -> TextTokenizer:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError:
        raise PretrainerError(f"{path}: a vocab.txt must be UTF-8 text") from None
    # Same ids as BERT's own loader: the line number, a repeated token keeping its last line.
    vocab = {line.rstrip("\n"): index for index, line in enumerate(lines)}
    missing = [t for t in WORDPIECE_SPECIALS if t not in vocab]
    if missing:
        raise PretrainerError(f"{path}: a BERT vocab.txt must list {', '.join(missing)}")
    tokenizer = bert_pipeline(Tokenizer(models.WordPiece(vocab, unk_token=UNK)), lowercase)
    # As in BertTokenizerFast: the specials are matched whole in raw text, never split or lowercased.
    tokenizer.add_special_tokens(WORDPIECE_SPECIALS)
    return TextTokenizer(tokenizer, source=str(path))
