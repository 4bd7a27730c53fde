"""Entity-level IOB2 scoring against hand-counted cases (conlleval's reading of spans)."""

import pytest

from pretrainer.evaluation.entities import entity_scores, entity_spans


def test_spans_of_well_formed_tags():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "O"]
    assert entity_spans(tags) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6)]


@pytest.mark.parametrize("tags, spans", [
    (["O", "I-PER", "I-PER"], [("PER", 1, 3)]),  # I- without B- opens an entity
    (["I-PER"], [("PER", 0, 1)]),
    (["B-LOC", "I-PER", "I-PER"], [("LOC", 0, 1), ("PER", 1, 3)]),  # type change splits
    (["B-PER", "O", "I-PER"], [("PER", 0, 1), ("PER", 2, 3)]),
    ([], []),
])
def test_spans_of_ill_formed_tags(tags, spans):
    assert entity_spans(tags) == spans


def test_not_iob2_is_refused():
    with pytest.raises(ValueError, match="X-PER"):
        entity_spans(["X-PER"])


def test_exact_match_is_perfect():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    scores = entity_scores(gold, gold)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (1.0, 1.0, 1.0)
    assert scores["tp"] == 3 and scores["per_type"]["LOC"]["tp"] == 1


def test_partial_spans_count_as_false_positive_and_false_negative():
    gold = [["B-PER", "I-PER", "I-PER", "O"], ["B-ORG", "O", "O"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"],      # too short
            ["B-ORG", "I-ORG", "O"],           # too long
            ["B-LOC", "O"]]                    # right
    scores = entity_scores(gold, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 2, 2)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3)
    assert scores["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 1, "fn": 1}


def test_type_mismatch_is_wrong_twice():
    scores = entity_scores([["B-PER", "I-PER", "O"]], [["B-ORG", "I-ORG", "O"]])
    assert (scores["tp"], scores["fp"], scores["fn"]) == (0, 1, 1)
    assert scores["per_type"]["PER"]["fn"] == 1 and scores["per_type"]["ORG"]["fp"] == 1
    assert scores["f1"] == 0.0


def test_i_without_b_matches_a_b_entity():
    # conlleval reads a leading I- as the start of an entity, so it matches B- I- in gold.
    gold = [["O", "B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["O", "I-PER", "I-PER", "O", "O"]]
    scores = entity_scores(gold, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 0, 1)
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5
    assert scores["f1"] == pytest.approx(2 / 3)


def test_micro_average_pools_counts_over_types():
    gold = [["B-PER", "O", "B-LOC", "O", "B-LOC"]]
    pred = [["B-PER", "O", "B-LOC", "B-ORG", "O"]]
    scores = entity_scores(gold, pred)
    # tp: PER, LOC; fp: ORG; fn: second LOC
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 1)
    assert scores["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert scores["per_type"]["LOC"]["recall"] == 0.5
    assert set(scores["per_type"]) == {"LOC", "ORG", "PER"}


def test_entities_do_not_cross_sentences():
    scores = entity_scores([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])
    assert scores["tp"] == 2


def test_nothing_to_find_scores_zero():
    scores = entity_scores([["O", "O"]], [["O", "O"]])
    assert scores["f1"] == 0.0 and scores["per_type"] == {}


def test_lengths_must_agree():
    with pytest.raises(ValueError, match="sentence 0"):
        entity_scores([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="predicted sentences"):
        entity_scores([["O"]], [])
