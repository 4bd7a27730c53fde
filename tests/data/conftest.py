"""Tiny corpora, tokenizers and token streams shared by the data tests."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pretrainer.config import Config, TokenizerConfig
from pretrainer.data.shards import TokenStream, _pack, find_sentence_starts
from pretrainer.data.tokenizer import train_tokenizer

WORDS = ("the cat dog sat ran on under a mat tree house bird sang loudly quietly green red "
         "small big river stone ate slept jumped over happy sad morning night").split()


def make_documents(n_docs: int, seed: int = 0) -> list[str]:
    """Documents of 1-5 short sentences each, from a fixed small vocabulary."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(1, 5)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
            sentences.append(" ".join(words).capitalize() + rng.choice(".!?"))
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return make_documents(200)


@pytest.fixture(scope="session")
def wordpiece(documents):
    return train_tokenizer(documents, TokenizerConfig(kind="wordpiece", vocab_size=200, min_frequency=1))


@pytest.fixture(scope="session")
def bytebpe(documents):
    return train_tokenizer(documents, TokenizerConfig(kind="bytebpe", vocab_size=400, min_frequency=1))


def make_stream(docs: list[str], tokenizer) -> TokenStream:
    tokens, lengths = _pack(docs, tokenizer, np.uint16)
    doc_starts = np.cumsum(lengths + 1) - (lengths + 1)
    return TokenStream(tokens, doc_starts, find_sentence_starts(tokens, doc_starts, tokenizer))


@pytest.fixture(scope="session")
def stream(documents, wordpiece) -> TokenStream:
    return make_stream(documents, wordpiece)


@pytest.fixture(scope="session")
def stream_of(wordpiece):
    """Pack a list of documents with the wordpiece fixture: stream_of(docs) -> TokenStream."""
    return lambda docs: make_stream(docs, wordpiece)


@pytest.fixture
def corpus_config(tmp_path, documents):
    """A Config that prepares a 200-document txt corpus into a cache under tmp_path."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(documents) + "\n", encoding="utf-8")
    cfg = Config()
    cfg.data.train = [str(corpus)]
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.data.holdout = 0.1
    cfg.tokenizer.vocab_size = 200
    cfg.tokenizer.min_frequency = 1
    return cfg
