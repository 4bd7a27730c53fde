"""Prepare a corpus once: read, train (or load) the tokenizer, tokenize, pack, cache.

Each split becomes one flat token array, documents back to back with the tokenizer's
separator after each one:

    tokens      doc0 tok ... doc0 tok SEP doc1 tok ... SEP ...   (N,) uint16 or uint32, .npy
    doc_starts  offset of each document's first token             (D,) int64
    sentence_starts  offset of each sentence's first token        (S,) int64, for NSP

The cache folder is named by a SHA-256 over the data and tokenizer config, the seed and the
bytes of every input file, so changing any of them prepares afresh and repeating a run
reuses the shards. A folder is built under a temporary name and renamed into place: a
folder under its final name is always complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from pretrainer.config import Config, DataConfig
from pretrainer.data.readers import ReadStats, read_documents
from pretrainer.data.sources import cache_root
from pretrainer.data.tokenizer import TextTokenizer, load_tokenizer, tokenizer_file, train_tokenizer
from pretrainer.errors import PretrainerError

# Bump when the layout or the packing rules change, so old caches are not reused.
SHARD_FORMAT = 1
ENCODE_BATCH_DOCS = 1024


@dataclass
class TokenStream:
    """One split: packed tokens (memory-mapped) and where documents and sentences start."""

    tokens: np.ndarray
    doc_starts: np.ndarray
    sentence_starts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_documents(self) -> int:
        return len(self.doc_starts)

    def doc_ends(self) -> np.ndarray:
        """(D,) int64: one past each document's last token (where its separator sits)."""
        return np.append(self.doc_starts[1:], len(self.tokens)).astype(np.int64) - 1


@dataclass
class PreparedCorpus:
    tokenizer: TextTokenizer
    train: TokenStream
    eval: TokenStream
    cache_dir: Path
    meta: dict


def prepare_corpus(cfg: Config, log: Callable[[str], None] = print) -> PreparedCorpus:
    """Shards for `cfg.data` under the cache; built once, then reused."""
    data = cfg.data
    if not data.train:
        raise PretrainerError("config key 'data.train' is empty: name at least one corpus file")
    for path in [*data.train, *data.eval]:
        if not Path(path).is_file():
            raise PretrainerError(f"{path}: file not found")

    shards_dir = cache_root(data.cache_dir or None) / "shards"
    final = shards_dir / cache_key(cfg)
    if not (final / "meta.json").is_file():
        shards_dir.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{final.name[:16]}-", dir=shards_dir))
        try:
            _build(cfg, building, log)
            if final.exists() and not (final / "meta.json").is_file():
                shutil.rmtree(final)  # left by hand or by an older version, never by a finished build
            try:
                os.rename(building, final)
            except OSError:
                if not (final / "meta.json").is_file():
                    raise
                # Another process finished the same build first; its result is identical.
        finally:
            shutil.rmtree(building, ignore_errors=True)
    else:
        log(f"using cached shards at {final}")
    return open_prepared(final)


def cache_key(cfg: Config) -> str:
    """SHA-256 over what determines the shards: configs, seed and the input files' bytes."""
    data = dataclasses.asdict(cfg.data)
    data.pop("cache_dir")
    h = hashlib.sha256()
    h.update(json.dumps({"format": SHARD_FORMAT, "data": data, "tokenizer": dataclasses.asdict(cfg.tokenizer),
                         "seed": cfg.run.seed}, sort_keys=True).encode())
    files = [*data["train"], *data["eval"]]
    if cfg.tokenizer.path:
        files.append(tokenizer_file(cfg.tokenizer.path))
    for path in files:
        h.update(_file_sha256(path).encode())
    return h.hexdigest()


def _file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _random_access_memmap(path: Path) -> np.ndarray:
    """The token array, memory-mapped, with the kernel told that reads will be random.

    Training reads one short window at a time from anywhere in the file; the default
    read-ahead would page in far more than the window on every fault, so a few dozen steps
    would pull most of a large corpus into memory (file-backed and reclaimable, but counted
    in the process's RSS and read from disk for nothing).
    """
    tokens = np.load(path, mmap_mode="r")
    handle = getattr(tokens, "_mmap", None)  # numpy keeps the mmap object here
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        handle.madvise(mmap.MADV_RANDOM)
    return tokens


def open_prepared(directory: Path) -> PreparedCorpus:
    meta = json.loads((directory / "meta.json").read_text())

    def stream(split: str) -> TokenStream:
        return TokenStream(tokens=_random_access_memmap(directory / f"{split}.npy"),
                           # Offsets are mapped too: a sentence index is a few bytes per token
                           # of corpus, which in memory would grow with the corpus.
                           doc_starts=np.load(directory / f"{split}_doc_starts.npy", mmap_mode="r"),
                           sentence_starts=np.load(directory / f"{split}_sentence_starts.npy", mmap_mode="r"))

    return PreparedCorpus(tokenizer=load_tokenizer(directory / "tokenizer.json"), train=stream("train"),
                          eval=stream("eval"), cache_dir=directory, meta=meta)


def _build(cfg: Config, out: Path, log: Callable[[str], None]) -> None:
    data = cfg.data
    if cfg.tokenizer.path:
        tokenizer = load_tokenizer(cfg.tokenizer.path, lowercase=cfg.tokenizer.lowercase)
    else:
        log(f"training a {cfg.tokenizer.kind} tokenizer (vocab {cfg.tokenizer.vocab_size:,}) "
            f"on {', '.join(data.train)}")
        counted = _Counter(_documents(data.train, data, {}))
        tokenizer = train_tokenizer(counted, cfg.tokenizer)
        if counted.n == 0:
            raise PretrainerError(f"corpus is empty: {', '.join(data.train)} hold no documents")
    dtype = np.uint16 if tokenizer.vocab_size < 2**16 else np.uint32

    skipped: dict[str, int] = {}
    train_tokens, train_lengths = _pack(_documents(data.train, data, skipped), tokenizer, dtype)
    if len(train_lengths) == 0:
        raise PretrainerError(f"corpus is empty: {', '.join(data.train)} hold no documents")
    if data.eval:
        eval_tokens, eval_lengths = _pack(_documents(data.eval, data, skipped), tokenizer, dtype)
    else:
        held_out = _choose_holdout(len(train_lengths), data.holdout, cfg.run.seed)
        (train_tokens, train_lengths), (eval_tokens, eval_lengths) = _split_documents(
            train_tokens, train_lengths, held_out)
    for path, n in skipped.items():
        if n:
            log(f"{path}: skipped {n} lines that were not valid UTF-8")

    tokenizer.save(out)
    splits = (("train", train_tokens, train_lengths), ("eval", eval_tokens, eval_lengths))
    for split, tokens, lengths in splits:
        doc_starts = np.cumsum(lengths + 1) - (lengths + 1)
        np.save(out / f"{split}.npy", tokens)
        np.save(out / f"{split}_doc_starts.npy", doc_starts.astype(np.int64))
        np.save(out / f"{split}_sentence_starts.npy", find_sentence_starts(tokens, doc_starts, tokenizer))
    meta = {
        "documents": int(len(train_lengths) + len(eval_lengths)),
        "train_documents": int(len(train_lengths)),
        "eval_documents": int(len(eval_lengths)),
        "train_tokens": int(len(train_tokens)),
        "eval_tokens": int(len(eval_tokens)),
        "tokens": int(len(train_tokens) + len(eval_tokens)),
        "skipped_bad_utf8_lines": int(sum(skipped.values())),
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_kind": tokenizer.kind,
        "dtype": np.dtype(dtype).name,
        "format": SHARD_FORMAT,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


class _Counter:
    """Pass an iterator through and count its items (the trainer consumes it in Rust)."""

    def __init__(self, items: Iterable[str]):
        self.items = iter(items)
        self.n = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        item = next(self.items)
        self.n += 1
        return item


def _documents(paths: list[str], data: DataConfig, skipped: dict[str, int]) -> Iterator[str]:
    """Documents of all files in order, at most data.max_documents per file."""
    for path in paths:
        stats = ReadStats()
        yield from itertools.islice(read_documents(path, data, stats), data.max_documents or None)
        skipped[path] = stats.bad_utf8_lines


def _pack(documents: Iterable[str], tokenizer: TextTokenizer, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(tokens with a separator after each document, (D,) tokens per document without separator)."""
    token_chunks, length_chunks = [], []
    documents = iter(documents)
    while batch := list(itertools.islice(documents, ENCODE_BATCH_DOCS)):
        ids = tokenizer.encode_batch(batch)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
        lengths = lengths[lengths > 0]  # a document of only control characters has no tokens
        separator_at = np.cumsum(lengths + 1) - 1
        packed = np.empty(len(flat) + len(lengths), dtype=dtype)
        is_separator = np.zeros(len(packed), dtype=bool)
        is_separator[separator_at] = True
        packed[is_separator] = tokenizer.doc_separator_id
        packed[~is_separator] = flat
        token_chunks.append(packed)
        length_chunks.append(lengths)
    if not token_chunks:
        return np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64)
    return np.concatenate(token_chunks), np.concatenate(length_chunks)


def _choose_holdout(n_docs: int, fraction: float, seed: int) -> np.ndarray:
    """(D,) bool: a seeded random `fraction` of documents, at least one when there are two or more."""
    held_out = np.zeros(n_docs, dtype=bool)
    if fraction <= 0 or n_docs < 2:
        return held_out
    k = min(n_docs - 1, max(1, round(fraction * n_docs)))
    held_out[np.random.default_rng(seed).choice(n_docs, size=k, replace=False)] = True
    return held_out


def _split_documents(tokens: np.ndarray, lengths: np.ndarray, held_out: np.ndarray):
    """Split packed documents into (kept, held out), each still packed, in corpus order."""
    token_held_out = np.repeat(held_out, lengths + 1)  # (N,) each document's flag over its tokens + SEP
    return ((tokens[~token_held_out], lengths[~held_out]), (tokens[token_held_out], lengths[held_out]))


def find_sentence_starts(tokens: np.ndarray, doc_starts: np.ndarray, tokenizer: TextTokenizer) -> np.ndarray:
    """(S,) int64 offsets where sentences begin: document starts, and word-starting tokens
    right after a sentence-ending token (".", "!", "?"). Cheap and good enough for NSP."""
    if len(tokens) == 0:
        return np.zeros(0, dtype=np.int64)
    ids = np.asarray(tokens)
    ends = tokenizer.ends_sentence(ids)
    starts = np.zeros(len(ids), dtype=bool)
    starts[1:] = ends[:-1] & ~ends[1:] & tokenizer.word_starts(ids[1:]) & ~tokenizer.special_table[ids[1:]]
    starts[doc_starts] = True
    return np.flatnonzero(starts).astype(np.int64)
