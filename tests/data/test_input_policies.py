"""The input policies of issue #20: every odd input is an error naming where it is, or a skip or
strip that is counted and reported; never a silent misread."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pretrainer.config import LabeledDataConfig, TokenizerConfig
from pretrainer.data import shards, tokenizer as tokenizer_module
from pretrainer.data.conll import read_conll
from pretrainer.data.readers import ReadStats, read_documents, read_labeled
from pretrainer.data.shards import open_prepared, prepare_corpus
from pretrainer.data.text import TextData
from pretrainer.data.text_config import TextDataConfig
from pretrainer.data.tokenizer import text_pieces, train_tokenizer
from pretrainer.errors import PretrainerError

QUIET = dict(log=lambda *_: None)


def one_line_error(call, *parts: str) -> str:
    with pytest.raises(PretrainerError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(p in message for p in parts), message
    return message


# ---------------------------------------------------------------- control characters


def test_control_characters_are_stripped_and_counted(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"nul\x00byte here\nescape \x1b[1mbold\x7f\n\x00\x01\x02\ntab\tkept, dash\xc2\x97\xc2\x97.\n")
    stats = ReadStats()
    # Between two letters a run becomes a space (words stay apart), elsewhere it just goes.
    assert list(read_documents(path, TextDataConfig(), stats)) == ["nul byte here", "escape [1mbold",
                                                                   "tab\tkept, dash."]
    # 1 + 2 + 3 + 2 characters stripped; the line of nothing but controls is an empty text
    assert (stats.control_chars, stats.empty_texts) == (8, 1)


def test_control_characters_escaped_in_json_count_too(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a\\u0000b"}\n{"text": "\\u0007"}\n')
    stats = ReadStats()
    assert list(read_documents(path, TextDataConfig(), stats)) == ["a b"]
    assert (stats.control_chars, stats.empty_texts) == (2, 1)


@pytest.mark.parametrize("name,content,where", [("c.txt", b"fine\nbad \x00 nul\n", "c.txt:2"),
                                                ("c.jsonl", b'{"text": "ok"}\n{"text": "\\u001b"}\n', "c.jsonl:2")])
def test_control_characters_error_policy_names_the_line(tmp_path, name, content, where):
    path = tmp_path / name
    path.write_bytes(content)
    one_line_error(lambda: list(read_documents(path, TextDataConfig(on_control_chars="error"))),
                   where, "control character U+00", 'data.on_control_chars = "strip"')


@pytest.mark.parametrize("kind,vocab", [("wordpiece", 200), ("bytebpe", 300)])
def test_both_tokenizers_see_the_same_text_without_nul(corpus_config, tmp_path, kind, vocab):
    """NULs were training tokens for byte-level BPE and vanished silently for WordPiece: now both
    prepare the stripped text, and the count is in the metadata and the log."""
    corpus = tmp_path / "nul.txt"
    docs = [f"the cat sat on mat number {i}" for i in range(40)]
    corpus.write_text("\n".join(d.replace(" on ", " on\x00 ") for d in docs) + "\n")
    corpus_config.data.train = [str(corpus)]
    corpus_config.tokenizer.kind, corpus_config.tokenizer.vocab_size = kind, vocab
    logged = []
    prepared = prepare_corpus(corpus_config, log=logged.append)
    assert prepared.meta["stripped_control_chars"] == 40
    assert any("stripped 40 control characters" in line for line in logged)
    text = prepared.tokenizer.decode(np.asarray(prepared.train.tokens))
    assert "\x00" not in text and "sat on mat" in text


def test_labeled_control_characters_strip_or_error(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"text": "go\\u0000od\\u0007.", "label": "1\\u0000"}\n{"text": "bad", "label": "0"}\n')
    examples = read_labeled(path, LabeledDataConfig())
    assert (examples.texts, examples.labels, examples.stats.control_chars) == (["go od.", "bad"], ["1", "0"], 3)
    one_line_error(lambda: read_labeled(path, LabeledDataConfig(on_control_chars="error")), "l.jsonl:1",
                   "U+0000", 'finetune.data.on_control_chars = "strip"')


def test_conll_control_characters_are_stripped_and_counted(tmp_path):
    path = tmp_path / "n.conll"
    path.write_bytes(b"Paris\x00\tB-LOC\nis\tO\n")
    stats = ReadStats()
    assert read_conll(path, stats=stats)[0].words == ["Paris", "is"] and stats.control_chars == 1
    one_line_error(lambda: read_conll(path, on_control_chars="error"), "n.conll:1", "U+0000")


# ---------------------------------------------------------------- undecodable lines, empty texts


def test_labeled_bad_utf8_lines_and_empty_texts_are_counted(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_bytes(b'{"text": "good", "label": "1"}\n{"text": "\xff", "label": "0"}\n'
                     b'{"text": "  ", "label": "0"}\n{"text": "bad", "label": "0"}\n')
    one_line_error(lambda: read_labeled(path, LabeledDataConfig(on_bad_utf8="skip")), "l.jsonl:3", "empty text",
                   'on_empty_text = "skip"')
    examples = read_labeled(path, LabeledDataConfig(on_bad_utf8="skip", on_empty_text="skip"))
    assert examples.texts == ["good", "bad"] and examples.line_numbers == [1, 4]
    assert examples.stats.as_dict() == {"skipped_bad_utf8_lines": 1, "stripped_control_chars": 0,
                                        "skipped_empty_texts": 1}
    assert examples.stats.describe() == "skipped 1 lines that were not valid UTF-8; skipped 1 empty texts"


def test_label_text_line_without_text_follows_the_empty_text_policy(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("1 fine film\n0\n0 dull\n")
    one_line_error(lambda: read_labeled(path, LabeledDataConfig()), "l.txt:2", "expected 'label text'")
    assert read_labeled(path, LabeledDataConfig(on_empty_text="skip")).labels == ["1", "0"]


def test_empty_label_is_an_error(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("text,label\ngood film,1\ndull film, \n")
    one_line_error(lambda: read_labeled(path, LabeledDataConfig()), "l.csv:3", "empty label")


def test_corpus_empty_texts_and_token_less_documents_are_counted(corpus_config, tmp_path, documents):
    corpus = tmp_path / "c.jsonl"
    rows = [{"text": d} for d in documents] + [{"text": ""}, {"text": "   "}, {"text": "\ufffd"}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus_config.data.train = [str(corpus)]
    logged = []
    meta = prepare_corpus(corpus_config, log=logged.append).meta
    assert meta["skipped_empty_texts"] == 2
    assert meta["skipped_documents_without_tokens"] == 1  # WordPiece drops U+FFFD
    assert meta["documents"] == len(documents)
    assert any("skipped 2 empty texts" in line for line in logged)
    assert any("1 documents that gave no tokens" in line for line in logged)


# ---------------------------------------------------------------- held-out data


def test_no_held_out_data_is_said_not_scored(corpus_config):
    corpus_config.data.holdout = 0.0
    data = TextData(corpus_config).prepare(**QUIET)
    assert not data.has_heldout and len(data.prepared.eval.tokens) == 0
    assert "no held-out data" in data.summary()
    corpus_config.data.holdout = 0.1
    assert TextData(corpus_config).prepare(**QUIET).has_heldout


# ---------------------------------------------------------------- vocabulary size


def test_wordpiece_vocab_below_the_alphabet_is_an_error(documents):
    message = one_line_error(lambda: train_tokenizer(documents, TokenizerConfig(vocab_size=5, min_frequency=1)),
                             "tokenizer.vocab_size' = 5", "minimum for this corpus")
    minimum = int(message.split("corpus: ")[1].split()[0])
    assert train_tokenizer(documents, TokenizerConfig(vocab_size=minimum, min_frequency=1)).vocab_size == minimum


def test_bytebpe_vocab_below_256_bytes_is_an_error():
    one_line_error(lambda: train_tokenizer(["a b"], TokenizerConfig(kind="bytebpe", vocab_size=100)),
                   "tokenizer.vocab_size' = 100", "257")


# ---------------------------------------------------------------- long lines


def _random_text(rng: random.Random, n_words: int) -> str:
    words = ["cat", "Dog", "sat,", "on", "the", "mat.", "naïve", "東京", "x" * 12, "'s", "123", "--"]
    gaps = [" ", "  ", "\n", " \n ", "\t", " \t", "\n\n", "   "]
    return "".join(rng.choice(words) + rng.choice(gaps) for _ in range(n_words)).strip()


def test_text_pieces_cover_the_text_and_respect_the_size():
    rng = random.Random(0)
    text = _random_text(rng, 2000)
    pieces = list(text_pieces(text, max_chars=64))
    assert "".join(pieces) == text and all(len(p) <= 64 for p in pieces) and len(pieces) > 100
    assert list(text_pieces("a" * 200, max_chars=64)) == ["a" * 64] * 3 + ["a" * 8]  # no whitespace: hard cuts


@pytest.mark.parametrize("kind", ["wordpiece", "bytebpe"])
def test_long_texts_encode_in_pieces_exactly_as_whole(monkeypatch, documents, kind):
    rng = random.Random(1)
    texts = [_random_text(rng, n) for n in (5, 400, 3000)] + documents[:5]
    tok = train_tokenizer(texts + documents, TokenizerConfig(kind=kind, vocab_size=400, min_frequency=1))
    whole = tok.encode_batch(texts)
    monkeypatch.setattr(tokenizer_module, "PIECE_CHARS", 100)  # 3000 words: ~500 pieces
    monkeypatch.setattr(tokenizer_module, "ENCODE_GROUP_CHARS", 1000)
    assert tok.encode_batch(texts) == whole
    # The trainer counts pre-tokenized words; pieces give the same words (so the same counts).
    pre = tok.tokenizer.pre_tokenizer

    def words(text):
        normalizer = tok.tokenizer.normalizer
        return [w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text) if normalizer else text)]

    assert [w for p in text_pieces(texts[2], 100) for w in words(p)] == words(texts[2])


@pytest.mark.parametrize("kind", ["wordpiece", "bytebpe"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="ab.,'!  \n\t\r\u3000\xa0\u0301é東", max_size=200), max_chars=st.integers(8, 40))
def test_pieces_cut_at_whitespace_tokenize_as_the_whole(request, kind, text, max_chars):
    """Any text whose pieces were cut at a space, tab or newline (not a hard cut in a long
    stretch without one) gives the whole text's ids, for both tokenizers."""
    tok = request.getfixturevalue(kind)
    pieces = list(text_pieces(text, max_chars))
    assert "".join(pieces) == text
    assume(all(p[:1] in " \n\t" for p in pieces[1:]))
    ids = [i for p in pieces for i in tok.tokenizer.encode(p, add_special_tokens=False).ids]
    assert ids == tok.tokenizer.encode(text, add_special_tokens=False).ids


@pytest.mark.slow
def test_a_10_mb_line_prepares_in_bounded_memory(tmp_path):
    """A single 10 MB line needed ~1.4 GB peak RSS (tokenizer training and encoding held the whole
    line's encodings); in pieces it needs ~330 MB, of which ~240 MB is the interpreter and torch."""
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    line = " ".join(rng.choice(words) for _ in range(1_700_000))[:10_000_000]
    (tmp_path / "long.txt").write_text(line + "\n")
    script = textwrap.dedent(f"""
        import resource
        from pretrainer.config import Config
        from pretrainer.data.shards import prepare_corpus
        cfg = Config()
        cfg.data.train, cfg.data.cache_dir = [{str(tmp_path / "long.txt")!r}], {str(tmp_path / "cache")!r}
        cfg.tokenizer.vocab_size = 500
        corpus = prepare_corpus(cfg, log=lambda *_: None)
        print(len(corpus.train.tokens), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    tokens, peak_mb = map(int, out.stdout.split())
    assert tokens > 1_000_000
    assert peak_mb < 600, f"peak RSS {peak_mb} MB for a 10 MB line"


# ---------------------------------------------------------------- cached shards


def _damage_truncate(folder: Path) -> None:
    path = folder / "train.npy"
    path.write_bytes(path.read_bytes()[:-10])


def _damage_dtype(folder: Path) -> None:
    path = folder / "train.npy"
    np.save(path, np.load(path).astype(np.int64))


def _damage_meta(folder: Path) -> None:
    (folder / "meta.json").write_text("{not json")


def _damage_missing(folder: Path) -> None:
    (folder / "eval_doc_starts.npy").unlink()


def _damage_header(folder: Path) -> None:
    (folder / "train_sentence_starts.npy").write_bytes(b"garbage")


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_dtype, _damage_meta, _damage_missing, _damage_header])
def test_a_damaged_cached_shard_is_detected_and_rebuilt(corpus_config, wordpiece, tmp_path, damage):
    wordpiece.save(tmp_path / "tok")  # a given tokenizer: WordPiece training is not repeatable run to run
    corpus_config.tokenizer.path = str(tmp_path / "tok")
    first = prepare_corpus(corpus_config, **QUIET)
    tokens = np.array(first.train.tokens)
    folder = first.cache_dir
    del first
    damage(folder)
    assert shards.check_prepared(folder)
    one_line_error(lambda: open_prepared(folder), str(folder), "damaged prepared shards")
    logged = []
    again = prepare_corpus(corpus_config, log=logged.append)
    assert any("are damaged" in line and "preparing them again" in line for line in logged), logged
    assert again.cache_dir == folder and np.array_equal(np.asarray(again.train.tokens), tokens)
    assert shards.check_prepared(folder) == ""


def test_a_changed_source_file_prepares_new_shards(corpus_config):
    first = prepare_corpus(corpus_config, **QUIET).cache_dir
    corpus = Path(corpus_config.data.train[0])
    corpus.write_text(corpus.read_text() + "one more document here\n")
    assert prepare_corpus(corpus_config, **QUIET).cache_dir != first
