"""`pretrainer lexicon`: a planted collocation is found by PMI, entity spans of a tagged file are
listed, and the file it writes is read back by masking."""

import math
import random

import pytest

from pretrainer.cli.main import main
from pretrainer.errors import PretrainerError
from pretrainer.lexicons import LexiconOptions, build_lexicon, chunks, collocations

FILLER = "the a film story was is and it plot actor scene good bad long short very quite".split()


def toy_corpus(n_docs=300, seed=0) -> list[str]:
    """Random filler words; every third document holds the planted phrase "special effects", and
    "special" and "effects" also occur apart, so only their pairing is surprising."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        words = [rng.choice(FILLER) for _ in range(rng.randint(8, 20))]
        if i % 3 == 0:
            words.insert(rng.randrange(len(words)), "special effects")
        if i % 7 == 0:
            words.insert(rng.randrange(len(words)), "special")
        if i % 11 == 0:
            words.insert(rng.randrange(len(words)), "effects")
        docs.append(" ".join(words) + ".")
    return docs


def test_the_planted_collocation_comes_first():
    docs = toy_corpus()
    found = collocations(lambda: iter(docs), LexiconOptions(min_count=5, min_pmi=1.0, stopwords=3))
    assert found[0][0] == "special effects"
    phrase, pmi, count = found[0]
    assert count == 100
    # by hand: log(c(ab) N / (c(a) c(b)))
    words = [w for d in docs for chunk in chunks(d) for w in chunk]
    n, a, b = len(words), words.count("special"), words.count("effects")
    assert pmi == pytest.approx(math.log(100 * n / (a * b)))
    # filler pairs are near chance: far below the planted pair
    assert all(p < pmi - 1 for _, p, _ in found[1:])


def test_ngrams_never_cross_punctuation_and_skip_stopword_edges():
    docs = ["new york. new york, new york!"] * 10 + ["the end of the road"] * 10
    found = {p for p, _, _ in collocations(lambda: iter(docs), LexiconOptions(min_count=2, min_pmi=0.0, stopwords=0))}
    assert "new york" in found and "york new" not in found  # "york. new" is never a bigram
    assert "of the" in found
    found = {p for p, _, _ in collocations(lambda: iter(docs), LexiconOptions(min_count=2, min_pmi=0.0, stopwords=3))}
    # the 3 most frequent words: new, york (30 each), the (20): no phrase starts or ends with them
    assert found == {"end of", "of the road"}  # a stopword inside a phrase is fine


def test_a_trigram_is_scored_by_its_weakest_split():
    docs = toy_corpus()
    found = {p: pmi for p, pmi, _ in collocations(lambda: iter(docs),
                                                   LexiconOptions(min_count=3, min_pmi=-50.0, stopwords=0))}
    pair = found["special effects"]
    assert all(pmi < pair - 1 for p, pmi in found.items() if len(p.split()) == 3 and "special effects" in p)


def test_entities_of_a_tagged_file(tmp_path):
    tagged = tmp_path / "ner.txt"
    tagged.write_text("en:Tom\tB-PER\nen:Hanks\tI-PER\nen:visited\tO\nen:New\tB-LOC\nen:York\tI-LOC\n\n"
                      "en:New\tB-LOC\nen:York\tI-LOC\nen:is\tO\nen:big\tO\n\n")
    out = tmp_path / "lexicon.txt"
    assert main(["lexicon", str(tagged), "--entities", "--token-prefix", "en:", "--out", str(out)]) == 0
    assert out.read_text().splitlines() == ["New York", "Tom Hanks"]


def test_from_a_config_reads_its_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(toy_corpus()) + "\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\ntrain = ["{corpus}"]\n')
    out = tmp_path / "lexicon.txt"
    assert main(["lexicon", str(config), "--out", str(out), "--min-pmi", "1", "--stopwords", "3"]) == 0
    assert out.read_text().splitlines()[0] == "special effects"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args,names", [
    (["--max-n", "1"], "--max-n"),
    (["--min-count", "0"], "--min-count"),
    (["--max-phrases", "0"], "--max-phrases"),
    (["--min-pmi", "50"], "--min-pmi"),  # nothing is that surprising
])
def test_bad_options_are_one_line_errors(tmp_path, args, names):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(toy_corpus()) + "\n")
    with pytest.raises(PretrainerError, match=names):
        build_lexicon(str(corpus), str(tmp_path / "out.txt"), LexiconOptions(**{
            "--max-n": {"max_n": 1}, "--min-count": {"min_count": 0}, "--max-phrases": {"max_phrases": 0},
            "--min-pmi": {"min_pmi": 50.0}}[args[0]]))
    assert not (tmp_path / "out.txt").exists()
