import numpy as np
import pytest

from pretrainer.config import TokenizerConfig
from pretrainer.data.tokenizer import load_tokenizer, train_tokenizer, truncate_longest_first
from pretrainer.errors import PretrainerError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "un",
         "##able", "cafe", ".", ",", "!", "'", "##t", "c", "##a", "是", "hello", "world", "##ly"]
TEXTS = ["The cats sat on the MAT.", "Café unable! [MASK] the", "是是 hello,cat  xyz",
         "Hello\tworld\u00a0the catly", "don't   sat...", ""]


@pytest.fixture
def vocab_dir(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return tmp_path


def test_vocab_txt_matches_hugging_face_bert(vocab_dir):
    transformers = pytest.importorskip("transformers")
    # from_pretrained reads vocab.txt the same way in transformers 4 and 5
    # (5 ignores a vocab_file= keyword).
    reference = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))
    ours = load_tokenizer(vocab_dir / "vocab.txt")
    assert ours.encode_batch(TEXTS) == [reference(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    ids, types = ours.encode_for_classification(["the cat sat"], ["on the mat"], max_len=64)
    expected = reference("the cat sat", "on the mat")
    assert ids[0] == expected["input_ids"] and types[0] == expected["token_type_ids"]
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 1, 2, 3, 4)


def test_directory_with_vocab_or_tokenizer_json(vocab_dir, tmp_path):
    assert load_tokenizer(vocab_dir).kind == "wordpiece"
    saved = load_tokenizer(vocab_dir).save(tmp_path / "run")
    assert saved.name == "tokenizer.json"
    again = load_tokenizer(tmp_path / "run")
    assert again.encode_batch(TEXTS) == load_tokenizer(vocab_dir).encode_batch(TEXTS)


def test_load_errors_are_one_line(tmp_path):
    for path, expect in [(tmp_path / "none.json", "tokenizer file not found"),
                         (tmp_path, "no tokenizer.json or vocab.txt")]:
        with pytest.raises(PretrainerError, match=expect):
            load_tokenizer(path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(PretrainerError, match="not a valid tokenizer.json") as info:
        load_tokenizer(bad)
    assert "\n" not in str(info.value)
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(PretrainerError, match=r"vocab.txt must list \[PAD\]"):
        load_tokenizer(tmp_path / "v")


def test_trained_wordpiece_specials_and_roundtrip(wordpiece, tmp_path):
    tok = wordpiece
    assert tok.kind == "wordpiece"
    assert [tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 2, 3, 4]
    assert tok.doc_separator_id == tok.sep_id and (tok.bos_id, tok.eos_id) == (tok.cls_id, tok.sep_id)
    assert tok.special_ids == [0, 2, 3, 4]
    assert tok.vocab_size <= 200
    ids = tok.encode_batch(["The cat sat on the mat."])[0]
    assert tok.decode(ids) == "the cat sat on the mat."
    reloaded = load_tokenizer(tok.save(tmp_path))
    assert reloaded.encode_batch(["The cat sat"]) == tok.encode_batch(["The cat sat"])


def test_training_twice_gives_the_same_ids():
    # WordPieceTrainer numbers tokens of equal count in hash-map order; ids must not depend on it.
    words = "the cat sat on the mat while a dog ran past the big red barn and slept".split()
    texts = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 3
    cfg = TokenizerConfig(kind="wordpiece", vocab_size=400, min_frequency=1)
    vocabs = [train_tokenizer(texts, cfg).tokenizer.get_vocab() for _ in range(4)]
    assert all(v == vocabs[0] for v in vocabs)
    assert [vocabs[0][t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]


def test_trained_bytebpe_specials(bytebpe):
    tok = bytebpe
    assert tok.kind == "bytebpe" and tok.mask_id is None
    eot = tok.token_to_id("<|endoftext|>")
    assert tok.pad_id == tok.bos_id == tok.eos_id == tok.doc_separator_id == eot
    text = "The cat sat on the mat.\nHello, wörld!"
    assert tok.decode(tok.encode_batch([text])[0]) == text  # byte level: nothing is lost


def test_word_starts_wordpiece(vocab_dir):
    tok = load_tokenizer(vocab_dir)
    ids = np.array([[2, 6, 10, 22, 11, 12, 3]])  # [CLS] cat ##s hello un ##able [SEP]
    assert tok.word_starts(ids).tolist() == [[True, True, False, True, True, False, True]]


def test_word_starts_bytebpe(bytebpe):
    tok = bytebpe
    ids = np.array(tok.encode_batch(["the cat sat"])[0])
    starts = tok.word_starts(ids)
    pieces = [tok.tokenizer.id_to_token(int(i)) for i in ids]
    assert starts.tolist() == [p.startswith("Ġ") for p in pieces]
    assert tok.word_starts(np.array([tok.eos_id])).all()


def test_classification_truncation_longest_first(wordpiece):
    tok = wordpiece
    long, short = "the cat sat on the mat " * 10, "a red bird"
    ids, types = tok.encode_for_classification([long, short], [short, long], max_len=16)
    for row, row_types in zip(ids, types):
        assert len(row) == 16 and len(row_types) == 16
        assert row[0] == tok.cls_id and row[-1] == tok.sep_id and row.count(tok.sep_id) == 2
    n_short = len(tok.encode_batch([short])[0])
    assert types[0].count(1) == n_short + 1  # the short second text survives whole
    single, single_types = tok.encode_for_classification([long], max_len=10)
    assert len(single[0]) == 10 and set(single_types[0]) == {0}


@pytest.mark.parametrize("a, b, budget, expect", [(3, 10, 5, (3, 2)), (10, 2, 5, (3, 2)), (10, 3, 5, (3, 2)),
                                                  (10, 10, 6, (3, 3)), (2, 2, 9, (2, 2))])
def test_truncate_longest_first(a, b, budget, expect):
    assert truncate_longest_first(a, b, budget) == expect


def test_unknown_kind():
    with pytest.raises(PretrainerError, match="tokenizer.kind"):
        train_tokenizer(["x"], TokenizerConfig(kind="sentencepiece"))


def test_truncate_longest_first_matches_trimming_one_token_at_a_time():
    for budget in range(0, 12):
        for a in range(0, 14):
            for b in range(0, 14):
                keep_a, keep_b = a, b
                while keep_a + keep_b > budget:  # the reference rule: trim the longer, b on ties
                    if keep_a > keep_b:
                        keep_a -= 1
                    else:
                        keep_b -= 1
                assert truncate_longest_first(a, b, budget) == (keep_a, keep_b)
