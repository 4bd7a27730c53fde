import json
from pathlib import Path

import numpy as np
import pytest

from pretrainer.data import shards
from pretrainer.data.shards import prepare_corpus
from pretrainer.errors import PretrainerError


def documents_of(stream):
    """Each document's token ids as a tuple (separators dropped)."""
    ends = stream.doc_ends()
    return [tuple(stream.tokens[s:e].tolist()) for s, e in zip(stream.doc_starts, ends)]


def test_prepare_packs_documents_with_separators(corpus_config, documents):
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    tok, train = corpus.tokenizer, corpus.train
    assert isinstance(train.tokens, np.memmap) and train.tokens.dtype == np.uint16
    assert train.tokens[train.doc_ends()].tolist() == [tok.sep_id] * train.num_documents
    assert train.doc_starts[0] == 0 and train.tokens[-1] == tok.sep_id
    encoded = {tuple(ids) for ids in tok.encode_batch(documents)}
    assert set(documents_of(train)) <= encoded
    meta = json.loads((corpus.cache_dir / "meta.json").read_text())
    assert meta == corpus.meta
    assert meta["documents"] == len(documents) and meta["tokenizer_kind"] == "wordpiece"
    assert meta["tokens"] == len(corpus.train.tokens) + len(corpus.eval.tokens)


def test_holdout_is_a_disjoint_seeded_split(corpus_config, documents):
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    train, held = documents_of(corpus.train), documents_of(corpus.eval)
    assert len(held) == round(0.1 * len(documents))
    assert sorted(train + held) == sorted(tuple(x) for x in corpus.tokenizer.encode_batch(documents))
    # every held-out document is absent from train (documents here are unique)
    assert not set(train) & set(held)


def test_holdout_keeps_at_least_one_document(corpus_config, tmp_path):
    (tmp_path / "two.txt").write_text("first document here\nsecond one there\n")
    corpus_config.data.train = [str(tmp_path / "two.txt")]
    corpus_config.data.holdout = 0.0001
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    assert (corpus.train.num_documents, corpus.eval.num_documents) == (1, 1)


def test_eval_files_replace_the_holdout(corpus_config, tmp_path, documents):
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents[:3]))
    corpus_config.data.eval = [str(tmp_path / "eval.jsonl")]
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    assert corpus.train.num_documents == len(documents)
    assert corpus.eval.num_documents == 3


def test_shards_do_not_depend_on_the_encoding_batch_size(corpus_config, tmp_path, monkeypatch):
    """The build appends batch by batch to disk; any batch size gives the same arrays."""
    # One tokenizer for both builds: training one twice may order tied merges differently.
    corpus_config.tokenizer.path = str(prepare_corpus(corpus_config, log=lambda m: None).cache_dir)
    corpus_config.data.cache_dir = str(tmp_path / "cache-one-batch")
    whole = prepare_corpus(corpus_config, log=lambda m: None)  # 200 documents: one batch
    monkeypatch.setattr(shards, "ENCODE_BATCH_DOCS", 7)
    corpus_config.data.cache_dir = str(tmp_path / "cache-small-batches")
    batched = prepare_corpus(corpus_config, log=lambda m: None)
    for split in ("train", "eval"):
        a, b = getattr(whole, split), getattr(batched, split)
        for name in ("tokens", "doc_starts", "sentence_starts"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (split, name)
        # sentence starts found per batch equal those found over the whole split at once
        assert np.array_equal(b.sentence_starts, shards.find_sentence_starts(
            np.asarray(b.tokens), np.asarray(b.doc_starts), batched.tokenizer))
    assert whole.meta == batched.meta
    assert not list(batched.cache_dir.glob("*.raw"))  # the raw parts became .npy files


def test_second_prepare_reuses_the_cache(corpus_config, monkeypatch):
    first = prepare_corpus(corpus_config, log=lambda m: None)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached corpus was tokenized again")

    monkeypatch.setattr(shards, "train_tokenizer", must_not_run)
    monkeypatch.setattr(shards, "_encoded_batches", must_not_run)
    lines = []
    second = prepare_corpus(corpus_config, log=lines.append)
    assert second.cache_dir == first.cache_dir
    assert lines == [f"using cached shards at {first.cache_dir}"]
    assert np.array_equal(second.train.tokens, first.train.tokens)
    # only the finished folder is left: no temporary build folders
    assert [p.name for p in first.cache_dir.parent.iterdir()] == [first.cache_dir.name]


def test_cache_key_follows_content_and_config(corpus_config):
    key = shards.cache_key(corpus_config)
    corpus_config.data.cache_dir = "/elsewhere"  # where the cache lives is not part of the key
    assert shards.cache_key(corpus_config) == key
    corpus_config.run.seed = 1
    assert shards.cache_key(corpus_config) != key
    corpus_config.run.seed = 0
    with open(corpus_config.data.train[0], "a") as f:
        f.write("one more document\n")
    assert shards.cache_key(corpus_config) != key


def test_cache_dir_from_environment(corpus_config, tmp_path, monkeypatch):
    corpus_config.data.cache_dir = ""
    monkeypatch.setenv("PRETRAINER_CACHE", str(tmp_path / "env_cache"))
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    assert corpus.cache_dir.parent == tmp_path / "env_cache" / "shards"


def test_a_failed_build_leaves_nothing_behind(corpus_config, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "_encoded_batches", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(corpus_config, log=lambda m: None)
    assert list((Path(corpus_config.data.cache_dir) / "shards").iterdir()) == []


def test_empty_corpus(corpus_config, tmp_path):
    (tmp_path / "empty.txt").write_text("\n   \n\n")
    corpus_config.data.train = [str(tmp_path / "empty.txt")]
    with pytest.raises(PretrainerError, match=r"corpus is empty: .*empty.txt hold no documents"):
        prepare_corpus(corpus_config, log=lambda m: None)


def test_missing_corpus_file(corpus_config, tmp_path):
    corpus_config.data.train = [str(tmp_path / "gone.txt")]
    with pytest.raises(PretrainerError, match="gone.txt: file not found"):
        prepare_corpus(corpus_config, log=lambda m: None)


def test_skipped_bad_utf8_lines_are_logged(corpus_config, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"a fine line\n\xff\xfe\nanother fine line\nmore text here\n")
    corpus_config.data.train = [str(path)]
    corpus_config.data.on_bad_utf8 = "skip"
    lines = []
    corpus = prepare_corpus(corpus_config, log=lines.append)
    assert f"{path}: skipped 1 lines that were not valid UTF-8" in lines
    assert corpus.meta["skipped_bad_utf8_lines"] == 1


def test_max_documents_per_file(corpus_config):
    corpus_config.data.max_documents = 20
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    assert corpus.meta["documents"] == 20


def test_given_tokenizer_is_used(corpus_config, tmp_path, wordpiece):
    wordpiece.save(tmp_path / "tok")
    corpus_config.tokenizer.path = str(tmp_path / "tok" / "tokenizer.json")
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    assert corpus.tokenizer.vocab_size == wordpiece.vocab_size
    doc = corpus.train.tokens[: corpus.train.doc_ends()[0]].tolist()
    assert corpus.tokenizer.decode(doc) == wordpiece.decode(doc)


def test_sentence_starts(corpus_config):
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    tok, train = corpus.tokenizer, corpus.train
    starts = train.sentence_starts
    assert set(train.doc_starts) <= set(starts)
    period = tok.token_to_id(".")
    after_period = np.flatnonzero(np.asarray(train.tokens[:-1]) == period) + 1
    after_period = after_period[train.tokens[after_period] != tok.sep_id]
    assert len(after_period) and set(after_period) <= set(starts)
    assert len(starts) > train.num_documents


def test_bytebpe_corpus(corpus_config):
    corpus_config.tokenizer.kind = "bytebpe"
    corpus_config.tokenizer.vocab_size = 300
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    tok = corpus.tokenizer
    assert tok.kind == "bytebpe" and corpus.train.tokens[-1] == tok.doc_separator_id
    first = corpus.train.tokens[: corpus.train.doc_ends()[0]]
    assert tok.decode(first)[0].isupper()  # byte-level keeps case


def test_missing_tokenizer_path(corpus_config, tmp_path):
    corpus_config.tokenizer.path = str(tmp_path / "no_such_dir")
    with pytest.raises(PretrainerError, match="no_such_dir: tokenizer file not found"):
        prepare_corpus(corpus_config, log=lambda m: None)


def test_no_holdout_gives_an_empty_eval_stream(corpus_config):
    corpus_config.data.holdout = 0.0
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    assert len(corpus.eval) == 0 and corpus.eval.num_documents == 0
    assert corpus.train.num_documents == 200


def test_sentinels_key_the_cache_only_when_asked_for(corpus_config):
    """Caches prepared before tokenizer.sentinels existed keep their names; asking for sentinels
    prepares (and names) another corpus, whose tokenizer has them after its vocabulary."""
    import dataclasses
    import hashlib
    import json

    tokenizer = dataclasses.asdict(corpus_config.tokenizer)
    tokenizer.pop("sentinels")
    data = dataclasses.asdict(corpus_config.data)
    data.pop("cache_dir"), data.pop("name")
    h = hashlib.sha256(json.dumps({"format": shards.SHARD_FORMAT, "data": data, "tokenizer": tokenizer,
                                   "seed": corpus_config.run.seed}, sort_keys=True).encode())
    for path in [*data["train"], *data["eval"]]:  # the key as it was computed before the field existed
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).hexdigest().encode())
    old = shards.cache_key(corpus_config)
    assert old == h.hexdigest()
    corpus_config.tokenizer.sentinels = 3
    assert shards.cache_key(corpus_config) != old
    corpus = prepare_corpus(corpus_config, log=lambda m: None)
    sentinels = corpus.tokenizer.sentinel_ids
    assert len(sentinels) == 3 and sentinels[0] == corpus.tokenizer.vocab_size - 1
    assert not np.isin(np.asarray(corpus.train.tokens), corpus.tokenizer.sentinel_ids).any()
