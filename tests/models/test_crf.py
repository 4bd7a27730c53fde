"""The linear-chain CRF against brute force over every tag sequence."""

import itertools

import pytest
import torch

from pretrainer.models.crf import LinearChainCRF

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def random_crf(num_tags, seed):
    torch.manual_seed(seed)
    crf = LinearChainCRF(num_tags)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf


def path_score(crf, emissions, path):
    """Score of one tag sequence, or None if the CRF forbids it."""
    if not crf.allowed_start[path[0]] or not all(crf.allowed[a, b] for a, b in zip(path, path[1:])):
        return None
    score = crf.start[path[0]] + crf.end[path[-1]] + sum(emissions[i, t] for i, t in enumerate(path))
    return score + sum(crf.transitions[a, b] for a, b in zip(path, path[1:]))


def all_paths(crf, emissions, length):
    paths = itertools.product(range(crf.num_tags), repeat=length)
    return {p: s for p in paths if (s := path_score(crf, emissions[:length], p)) is not None}


@pytest.mark.parametrize("constrained", [False, True])
def test_log_likelihood_and_viterbi_match_brute_force(constrained):
    crf = random_crf(len(TAGS), seed=0)
    if constrained:
        crf.restrict_to_iob2(TAGS)
    lengths = [4, 2, 1]
    emissions = torch.randn(len(lengths), 4, len(TAGS))
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    gold = torch.tensor([[1, 2, 0, 3], [3, 4, 0, 0], [0, 0, 0, 0]])  # well-formed IOB2; padding arbitrary
    log_likelihood = crf.log_likelihood(emissions, gold, mask)
    decoded = crf.decode(emissions, mask)
    for row, n in enumerate(lengths):
        scores = all_paths(crf, emissions[row], n)
        log_partition = torch.logsumexp(torch.stack(list(scores.values())), dim=0)
        expected = scores[tuple(gold[row, :n].tolist())] - log_partition
        assert log_likelihood[row].item() == pytest.approx(expected.item(), abs=1e-4)
        best = max(scores, key=lambda p: scores[p].item())
        assert tuple(decoded[row, :n].tolist()) == best


def test_a_row_without_words_has_zero_log_likelihood():
    crf = random_crf(3, seed=1)
    emissions = torch.randn(2, 3, 3)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    log_likelihood = crf.log_likelihood(emissions, torch.zeros(2, 3, dtype=torch.long), mask)
    assert log_likelihood[1].item() == 0.0 and log_likelihood[0].item() < 0.0


def test_iob2_constraints_and_observed_moves():
    crf = LinearChainCRF(len(TAGS))
    assert crf.restrict_to_iob2(TAGS) == 6  # each I-X from O, B-Y, I-Y
    index = {t: i for i, t in enumerate(TAGS)}
    allowed = lambda a, b: bool(crf.allowed[index[a], index[b]])  # noqa: E731
    assert allowed("B-PER", "I-PER") and allowed("I-PER", "I-PER") and allowed("I-PER", "O")
    assert not allowed("O", "I-PER") and not allowed("B-LOC", "I-PER") and not allowed("I-LOC", "I-PER")
    assert not crf.allowed_start[index["I-LOC"]] and crf.allowed_start[index["B-LOC"]]
    # IOB1-style gold (an entity opened by I-) keeps the moves it uses.
    assert crf.restrict_to_iob2(TAGS, observed=[[index["I-PER"], index["I-LOC"]]]) == 5
    assert crf.allowed_start[index["I-PER"]] and allowed("I-PER", "I-LOC")


def test_decoding_never_opens_an_entity_with_i():
    # Emissions that, read word by word, say "O I-PER I-PER": the CRF must not return that.
    crf = LinearChainCRF(len(TAGS))
    crf.restrict_to_iob2(TAGS)
    emissions = torch.full((1, 3, len(TAGS)), -5.0)
    emissions[0, 0, 0] = 5.0
    emissions[0, 1:, 2] = 5.0
    emissions[0, 1:, 1] = 4.0  # B-PER is a close second
    path = crf.decode(emissions, torch.ones(1, 3, dtype=torch.bool))[0].tolist()
    assert [TAGS[t] for t in path] == ["O", "B-PER", "I-PER"]


def test_tagger_objective_runs_the_crf_over_first_sub_tokens_only():
    # Labeled (first) sub-tokens sit among unlabeled ones; the CRF must see just those, in order.
    from pretrainer.objectives.token_classification import _labeled_words, _loss_and_predictions

    class Tagger(torch.nn.Module):
        crf = random_crf(3, seed=2)

    torch.manual_seed(3)
    logits = torch.randn(2, 6, 3)
    labels = torch.tensor([[-100, 1, -100, 2, 0, -100], [-100, -100, 2, -100, -100, -100]])
    words, tags, mask, _ = _labeled_words(logits, labels)
    torch.testing.assert_close(words[0, :3], logits[0, [1, 3, 4]])
    torch.testing.assert_close(words[1, :1], logits[1, [2]])
    assert tags.tolist() == [[1, 2, 0], [2, 0, 0]] and mask.tolist() == [[True] * 3, [True, False, False]]
    expected = -(Tagger.crf.log_likelihood(logits[:1, [1, 3, 4]], labels[:1, [1, 3, 4]], torch.ones(1, 3, dtype=bool))
                 + Tagger.crf.log_likelihood(logits[1:, [2]], labels[1:, [2]], torch.ones(1, 1, dtype=bool)))
    loss, predicted = _loss_and_predictions(Tagger(), logits, labels)
    torch.testing.assert_close(loss, expected.sum())
    path = Tagger.crf.decode(words, mask)
    assert predicted[0, [1, 3, 4]].tolist() == path[0].tolist() and predicted[1, 2] == path[1, 0]


def test_case_feature_table_has_a_row_per_word_shape():
    from pretrainer.data.conll import WORD_SHAPES
    from pretrainer.models.heads import N_WORD_SHAPES

    assert N_WORD_SHAPES == len(WORD_SHAPES)
