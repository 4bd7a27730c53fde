"""Prepare a corpus once: read, train (or load) the tokenizer, tokenize, pack, cache.

Each split becomes one flat token array, documents back to back with the tokenizer's
separator after each one:

    tokens      doc0 tok ... doc0 tok SEP doc1 tok ... SEP ...   (N,) uint16 or uint32, .npy
    doc_starts  offset of each document's first token             (D,) int64
    sentence_starts  offset of each sentence's first token        (S,) int64, for NSP

The cache folder is named by a SHA-256 over the data and tokenizer config, the seed and the
bytes of every input file, so changing any of them prepares afresh and repeating a run
reuses the shards. A folder is built under a temporary name and renamed into place: a
folder under its final name is always complete. Its meta.json records every array's file
size, dtype and length; a cached folder that no longer matches (a truncated or replaced
array, a missing file, unreadable metadata, another shard format) is reported in the log and
built again, never read.

Reading follows the input policies of data/readers.py; what they skipped or stripped, and
documents that gave no tokens, are counted in meta.json and reported in the log. A document
longer than the tokenizer's piece size is tokenized in pieces (`tokenizer.text_pieces`), and
a batch holds at most ENCODE_BATCH_CHARS characters, so memory stays bounded however long a
line is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import mmap
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from pretrainer.io import build_cache_once
from pretrainer.config import Config
from pretrainer.data.text_config import TextDataConfig
from pretrainer.data.readers import ReadStats, read_documents
from pretrainer.data.sources import cache_root
from pretrainer.data.tokenizer import TextTokenizer, load_tokenizer, tokenizer_file, train_tokenizer, with_sentinels
from pretrainer.errors import PretrainerError

# Bump when the layout or the packing rules change, so old caches are not reused
# (2: the hold-out is drawn over all documents read, empty ones included; 3: control characters
# stripped by the input policy, meta.json records each array's dtype, length and size).
SHARD_FORMAT = 3
ENCODE_BATCH_DOCS = 1024
ENCODE_BATCH_CHARS = 1 << 22  # a batch ends after the document that passes this many characters
SPLITS = ("train", "eval")
ARRAYS = ("", "_doc_starts", "_sentence_starts")  # each split's files: {split}{suffix}.npy


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
    damage = check_prepared(final) if (final / "meta.json").is_file() else None
    if damage:
        log(f"cached shards at {final} are damaged ({damage}): preparing them again")
        shutil.rmtree(final, ignore_errors=True)
    if not build_cache_once(final, lambda building: _build(cfg, building, log)):
        log(f"using cached shards at {final}")
    return open_prepared(final)


def cache_key(cfg: Config) -> str:
    """SHA-256 over what determines the shards: configs, seed and the input files' bytes."""
    data = dataclasses.asdict(cfg.data)
    data.pop("cache_dir")
    data.pop("name")  # shards depend on what is read, not on the module's registered name
    h = hashlib.sha256()
    tokenizer = dataclasses.asdict(cfg.tokenizer)
    if not tokenizer["sentinels"]:  # caches prepared before sentinels existed keep their names
        tokenizer.pop("sentinels")
    h.update(json.dumps({"format": SHARD_FORMAT, "data": data, "tokenizer": tokenizer,
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


def check_prepared(directory: Path) -> str:
    """What is wrong with a prepared folder ("" when nothing is): meta.json readable and of this
    shard format, every array present with the dtype, length and file size meta.json recorded.
    Cheap (headers and sizes only): the arrays' values are not read."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"meta.json unreadable: {e}"
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT or not isinstance(meta.get("arrays"), dict):
        return f"meta.json is not shard format {SHARD_FORMAT}"
    if not (directory / "tokenizer.json").is_file():
        return "tokenizer.json missing"
    expected = {f"{split}{suffix}.npy" for split in SPLITS for suffix in ARRAYS}
    if set(meta["arrays"]) != expected:
        return "meta.json does not list the split arrays"
    for name, recorded in meta["arrays"].items():
        if not (isinstance(recorded, list) and len(recorded) == 3):
            return f"meta.json: bad entry for {name}"
        dtype, length, size = recorded
        path = directory / name
        try:
            actual_size = path.stat().st_size
            shape, found = npy_header(path)
        except (OSError, ValueError, SyntaxError, TypeError) as e:  # missing, or no .npy header
            return f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        if actual_size != size or found.name != dtype or shape != (length,):
            return (f"{name}: {actual_size} bytes, {found} x {shape}; expected {size} bytes, "
                    f"{dtype} x ({length},)")
    return ""


def open_prepared(directory: Path) -> PreparedCorpus:
    damage = check_prepared(directory)
    if damage:
        raise PretrainerError(f"{directory}: damaged prepared shards ({damage}); delete the folder to prepare again")
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
    """Tokenize batch by batch and append each batch to its split's files, so memory stays
    flat however large the corpus (only per-document lengths are kept until the end)."""
    data = cfg.data
    if cfg.tokenizer.path:
        tokenizer = with_sentinels(load_tokenizer(cfg.tokenizer.path, lowercase=cfg.tokenizer.lowercase),
                                   cfg.tokenizer.sentinels)
        n_documents = None
    else:
        log(f"training a {cfg.tokenizer.kind} tokenizer (vocab {cfg.tokenizer.vocab_size:,}) "
            f"on {', '.join(data.train)}")
        counted = _Counter(_documents(data.train, data, {}))
        tokenizer = train_tokenizer(counted, cfg.tokenizer)
        n_documents = counted.n
    dtype = np.uint16 if tokenizer.vocab_size < 2**16 else np.uint32
    train, held = _SplitWriter(out, "train", dtype, tokenizer), _SplitWriter(out, "eval", dtype, tokenizer)

    skipped: dict[str, ReadStats] = {}  # per file: what the input policies skipped or stripped
    no_tokens = [0]  # documents the tokenizer made nothing of (all characters it drops)
    if data.eval:
        held_out = None
    else:
        if n_documents is None:  # the hold-out is drawn over document indices, so count them first
            n_documents = sum(1 for _ in _documents(data.train, data, {}))
        held_out = _choose_holdout(n_documents, data.holdout, cfg.run.seed)
    first = 0  # index of the batch's first document in the corpus
    for tokens, lengths, non_empty in _encoded_batches(_documents(data.train, data, skipped), tokenizer, dtype,
                                                       no_tokens):
        if held_out is None:
            train.append(tokens, lengths)
        else:
            is_held = held_out[first:first + len(non_empty)][non_empty]
            token_is_held = np.repeat(is_held, lengths + 1)  # each document's flag over its tokens + SEP
            train.append(tokens[~token_is_held], lengths[~is_held])
            held.append(tokens[token_is_held], lengths[is_held])
        first += len(non_empty)
    for tokens, lengths, _ in _encoded_batches(_documents(data.eval, data, skipped), tokenizer, dtype, no_tokens):
        held.append(tokens, lengths)
    if train.n_documents + (0 if data.eval else held.n_documents) == 0:
        raise PretrainerError(f"corpus is empty: {', '.join(data.train)} hold no documents")
    total = ReadStats()
    for path, stats in skipped.items():
        total.add(stats)
        if stats.describe():
            log(f"{path}: {stats.describe()}")
    if no_tokens[0]:
        log(f"skipped {no_tokens[0]:,} documents that gave no tokens (only characters the tokenizer drops)")

    tokenizer.save(out)
    train.close()
    held.close()
    meta = {
        "documents": train.n_documents + held.n_documents,
        "train_documents": train.n_documents,
        "eval_documents": held.n_documents,
        "train_tokens": train.n_tokens,
        "eval_tokens": held.n_tokens,
        "tokens": train.n_tokens + held.n_tokens,
        **total.as_dict(),
        "skipped_documents_without_tokens": no_tokens[0],
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_kind": tokenizer.kind,
        "dtype": np.dtype(dtype).name,
        "format": SHARD_FORMAT,
        # name: [dtype, length, file size], what check_prepared compares a cached folder with
        "arrays": {path.name: [npy_header(path)[1].name, npy_header(path)[0][0], path.stat().st_size]
                   for path in (out / f"{split}{suffix}.npy" for split in SPLITS for suffix in ARRAYS)},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


class _SplitWriter:
    """One split's arrays (tokens, doc_starts, sentence_starts), appended to raw files batch by
    batch and turned into .npy files by `close`."""

    def __init__(self, out: Path, split: str, dtype, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self.n_tokens = 0
        self.n_documents = 0
        self.arrays = {out / f"{split}{suffix}.npy": (np.dtype(kind), open(out / f"{split}{suffix}.raw", "wb"))
                       for suffix, kind in (("", dtype), ("_doc_starts", np.int64), ("_sentence_starts", np.int64))}

    def append(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Packed documents (a separator after each) and their lengths without the separator."""
        doc_starts = np.cumsum(lengths + 1) - (lengths + 1)
        # Sentence starts are found per batch: a batch begins with a document, which always starts one.
        sentence_starts = find_sentence_starts(tokens, doc_starts, self.tokenizer)
        for array, (dtype, f) in zip((tokens, doc_starts + self.n_tokens, sentence_starts + self.n_tokens),
                                     self.arrays.values()):
            f.write(np.ascontiguousarray(array, dtype=dtype).tobytes())
        self.n_tokens += len(tokens)
        self.n_documents += len(lengths)

    def close(self) -> None:
        for path, (dtype, f) in self.arrays.items():
            f.close()
            _raw_to_npy(Path(f.name), path, dtype)


def _raw_to_npy(raw: Path, npy: Path, dtype: np.dtype) -> None:
    """Prefix a file of raw values with a .npy header (copying in blocks, never loading it)."""
    n = raw.stat().st_size // dtype.itemsize
    with open(npy, "wb") as f, open(raw, "rb") as values:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": (n,)})
        shutil.copyfileobj(values, f, 1 << 24)
    raw.unlink()


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


def _documents(paths: list[str], data: TextDataConfig, skipped: dict[str, ReadStats]) -> Iterator[str]:
    """Documents of all files in order, at most data.max_documents per file; `skipped[path]`
    counts what reading that file skipped or stripped."""
    for path in paths:
        stats = ReadStats()
        yield from itertools.islice(read_documents(path, data, stats), data.max_documents or None)
        skipped[path] = stats


def _encoded_batches(documents: Iterable[str], tokenizer: TextTokenizer, dtype,
                     no_tokens: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per batch of documents: (packed tokens with a separator after each document, tokens per
    document without separator, which of the batch's documents had any tokens).

    A document of only characters the tokenizer drops has no tokens: it is left out of the
    first two and counted in `no_tokens[0]`.
    """
    for batch in _batches(documents):
        ids = tokenizer.encode_batch(batch)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
        non_empty = lengths > 0
        if no_tokens is not None:
            no_tokens[0] += int((~non_empty).sum())
        lengths = lengths[non_empty]
        separator_at = np.cumsum(lengths + 1) - 1
        packed = np.empty(len(flat) + len(lengths), dtype=dtype)
        is_separator = np.zeros(len(packed), dtype=bool)
        is_separator[separator_at] = True
        packed[is_separator] = tokenizer.doc_separator_id
        packed[~is_separator] = flat
        yield packed, lengths, non_empty


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    """Lists of at most ENCODE_BATCH_DOCS documents, ending after the one that passes
    ENCODE_BATCH_CHARS characters (one long document is a batch of its own)."""
    batch: list[str] = []
    size = 0
    for document in documents:
        batch.append(document)
        size += len(document)
        if len(batch) >= ENCODE_BATCH_DOCS or size >= ENCODE_BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def npy_header(path: Path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from a .npy file's header, without reading its values."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def _pack(documents: Iterable[str], tokenizer: TextTokenizer, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The whole of `documents` packed in memory: (tokens, (D,) tokens per document)."""
    batches = list(_encoded_batches(documents, tokenizer, dtype))
    if not batches:
        return np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64)
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _choose_holdout(n_docs: int, fraction: float, seed: int) -> np.ndarray:
    """(D,) bool: a seeded random `fraction` of documents, at least one when there are two or more."""
    held_out = np.zeros(n_docs, dtype=bool)
    if fraction <= 0 or n_docs < 2:
        return held_out
    k = min(n_docs - 1, max(1, round(fraction * n_docs)))
    held_out[np.random.default_rng(seed).choice(n_docs, size=k, replace=False)] = True
    return held_out


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
