"""Span masking (SpanBERT) and lexicon-unit masking (ERNIE): lengths, word borders, budget."""

import numpy as np
import pytest
import torch

from pretrainer.data.masking import choose_spans, choose_units, draw_spans, span_length_pmf, token_budget


def rows(b=64, t=128, seed=0, word_rate=0.7):
    """[CLS] ... [SEP] rows with a [SEP] in the middle, and random word starts."""
    g = torch.Generator().manual_seed(seed)
    special = torch.zeros(b, t, dtype=torch.bool)
    special[:, 0] = special[:, -1] = special[:, t // 2] = True
    return special, torch.rand(b, t, generator=g) < word_rate


def runs_of(chosen: np.ndarray) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of True in a row."""
    padded = np.concatenate([[False], chosen, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def test_the_span_length_law_is_the_truncated_geometric():
    pmf = span_length_pmf(0.2, 10)
    assert pmf.sum() == pytest.approx(1) and len(pmf) == 10
    assert pmf @ np.arange(1, 11) == pytest.approx(3.797, abs=1e-3)  # SpanBERT's "mean 3.8"
    assert pmf[1] / pmf[0] == pytest.approx(0.8)


def test_span_lengths_follow_the_clipped_geometric():
    """Spans drawn on long rows at a low rate (rarely cut short by a chosen word) have lengths in
    words that follow the law: chi-square with a fixed seed. Each row's last span is cut by the
    budget, so it is left out."""
    rng = np.random.default_rng(0)
    words = 50_000
    lengths = []
    for _ in range(12):
        spans = draw_spans(np.ones(words, dtype=int), np.ones(words, dtype=bool), words // 100,
                           span_length_pmf(0.2, 10), rng)
        lengths += [n for _, n in spans[:-1]]
    counts = np.bincount(lengths, minlength=11)[1:]
    expected = span_length_pmf(0.2, 10) * len(lengths)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert len(lengths) > 1500 and chi2 < 27.9, (counts, expected.round())  # 9 d.o.f., p = 0.001
    assert max(lengths) == 10 and np.mean(lengths) == pytest.approx(3.8, abs=0.25)


def test_spans_are_whole_words_within_the_budget():
    special, word_starts = rows()
    chosen = choose_spans(special, word_starts, 0.15, generator=torch.Generator().manual_seed(1))
    assert not (chosen & special).any()
    starts = word_starts | special
    starts[:, 1:] |= special[:, :-1]
    for row in range(len(chosen)):
        c, s = chosen[row].numpy(), starts[row].numpy()
        for start, end in runs_of(c):
            assert s[start] and (end == len(c) or s[end]), (row, start, end)  # begins and ends on word borders
    budget = token_budget(~special, 0.15).squeeze(1)
    n = chosen.sum(1)
    longest_word = 10  # the rows' words are short; one word may cross the budget
    assert (n >= budget).all() and (n < budget + longest_word).all()


def test_span_choice_is_seeded_and_draws_from_the_torch_stream():
    special, word_starts = rows(b=4)
    a = choose_spans(special, word_starts, 0.15, generator=torch.Generator().manual_seed(3))
    b = choose_spans(special, word_starts, 0.15, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    torch.manual_seed(0)
    c = choose_spans(special, word_starts, 0.15)
    d = choose_spans(special, word_starts, 0.15)
    assert not torch.equal(c, d)  # the global stream moved on


def test_units_are_chosen_whole_until_the_token_budget():
    special, word_starts = rows(seed=2)
    units = word_starts.clone()
    units[:, 5:9] = False  # tokens 4..8: one phrase of 5 tokens in every row
    units[:, 4] = True
    units[:, 9] = True
    chosen = choose_units(special, units, 0.15, generator=torch.Generator().manual_seed(0))
    phrase = chosen[:, 4:9]
    assert ((phrase.all(1)) | (~phrase.any(1))).all()  # all five tokens or none
    assert phrase.all(1).any() and (~phrase.any(1)).any()  # both happen over 64 rows
    budget = token_budget(~special, 0.15).squeeze(1)
    n = chosen.sum(1)
    assert (n >= budget).all() and (n < budget + 5 + 10).all()
    assert not (chosen & special).any()
    # every chosen run starts on a unit border (the token after a special one starts a unit)
    starts = units | special
    starts[:, 1:] |= special[:, :-1]
    for row in range(len(chosen)):
        for start, _ in runs_of(chosen[row].numpy()):
            assert starts[row, start]
