"""Which positions masked LM predicts, beyond single tokens and whole words (collators.mask_tokens):

- spans (SpanBERT): a span's length in words is drawn from a geometric distribution
  (p = 0.2) truncated to at most 10 words (mean 3.8 words, as in the paper); it starts at a
  random word not yet chosen and runs over the following words of the same text;
- units (ERNIE-style knowledge masking): a unit is a word, or a whole phrase of the lexicon
  found in the row (data/lexicon.py sets `unit_starts`); units are taken in random order.

Both keep BERT's budget in tokens: per row, units (spans) are added until
max(1, round(mask_rate * n)) of its n non-special tokens are chosen; the last one may cross
the budget, since a word or phrase is never split (a span is cut at the word that reaches it).
Both return the chosen positions (B, T) bool; `collators.corrupt_chosen` does the 80/10/10.
"""

from __future__ import annotations

import numpy as np
import torch


def token_budget(candidate: torch.Tensor, mask_rate: float) -> torch.Tensor:
    """(B, 1) long: how many of each row's candidate tokens are to be chosen."""
    n = candidate.sum(dim=1, keepdim=True)
    return torch.round(n * mask_rate).clamp(min=1).minimum(n).long()


def unit_boundaries(unit_starts: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """Unit starts with every special token a unit of its own and the token after it a new unit
    (a word cut off by packing never merges with [CLS] or [SEP])."""
    starts = unit_starts.bool() | special
    starts[:, 1:] |= special[:, :-1]
    starts[:, 0] = True
    return starts


def span_length_pmf(p: float = 0.2, max_len: int = 10) -> np.ndarray:
    """P(length = 1..max_len): geometric, truncated at max_len and renormalised."""
    lengths = np.arange(1, max_len + 1)
    pmf = p * (1 - p) ** (lengths - 1)
    return pmf / pmf.sum()


def numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded by one draw from `generator` (or torch's global RNG), so span
    draws follow the same seeding, checkpointing and evaluation rules as the other maskings."""
    on = generator.device if generator is not None else "cpu"
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=on).item()
    return np.random.default_rng(seed)


def choose_spans(special_tokens_mask: torch.Tensor, word_starts: torch.Tensor, mask_rate: float, *,
                 p: float = 0.2, max_len: int = 10,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """SpanBERT's choice: (B, T) bool, whole words in spans of geometric length (module doc)."""
    special = special_tokens_mask.bool().cpu()
    starts = unit_boundaries(word_starts.cpu(), special).numpy()
    candidate = (~special).numpy()
    budgets = token_budget(~special, mask_rate).squeeze(1).tolist()
    rng = numpy_rng(generator)
    pmf = span_length_pmf(p, max_len)
    B, T = candidate.shape
    chosen = np.zeros((B, T), dtype=bool)
    for row in range(B):
        first = np.flatnonzero(starts[row] & candidate[row])  # each candidate word's first token
        if not len(first):
            continue
        # A word ends where the next unit starts; it runs on to the next word of the same text
        # only when nothing (no special token) sits between them.
        bounds = np.append(np.flatnonzero(starts[row]), T)
        ends = bounds[np.searchsorted(bounds, first, side="right")]
        joined = np.append(ends[:-1] == first[1:], False)  # word i continues into word i + 1
        for word, n_words in draw_spans(ends - first, joined, budgets[row], pmf, rng):
            chosen[row, first[word]:ends[word + n_words - 1]] = True
    return torch.from_numpy(chosen).to(special_tokens_mask.device)


def draw_spans(word_lengths: np.ndarray, joined: np.ndarray, budget: int, pmf: np.ndarray,
               rng: np.random.Generator) -> list[tuple[int, int]]:
    """One row's spans as [(first word, number of words), ...] in the order drawn.

    word_lengths (W,): tokens per candidate word; joined (W,): word i runs on into word i + 1.
    A span of a drawn length starts at a random free word and runs over the following words
    until it has its length, meets a chosen word or a border (not joined), or the row's
    chosen tokens reach `budget` (so only the last span is cut by the budget)."""
    taken = np.zeros(len(word_lengths), dtype=bool)
    spans = []
    count = 0
    while count < budget and not taken.all():
        length = int(rng.choice(len(pmf), p=pmf)) + 1
        word = start = int(rng.choice(np.flatnonzero(~taken)))
        while True:
            taken[word] = True
            count += int(word_lengths[word])
            if word - start + 1 == length or count >= budget or not joined[word] or taken[word + 1]:
                break
            word += 1
        spans.append((start, word - start + 1))
    return spans


def choose_units(special_tokens_mask: torch.Tensor, unit_starts: torch.Tensor, mask_rate: float, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Whole units (words, lexicon phrases) in random order until the token budget is reached:
    (B, T) bool. Vectorised: no Python work per token."""
    special = special_tokens_mask.bool()
    candidate = ~special
    B, T = special.shape
    device = special.device
    starts = unit_boundaries(unit_starts, special)
    positions = torch.arange(T, device=device).expand(B, T)
    unit_first = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values  # (B, T)
    # Candidate tokens per unit, held at its first position (0 elsewhere and for special units).
    unit_len = torch.zeros(B, T, dtype=torch.long, device=device).scatter_add_(1, unit_first, candidate.long())
    on = generator.device if generator is not None else device
    scores = torch.rand(B, T, generator=generator, device=on).to(device)
    scores = scores.masked_fill(unit_len == 0, 2.0)  # not a unit: sorts last
    order = scores.argsort(dim=1)  # (B, T): positions of the units, in random order
    length_in_order = unit_len.gather(1, order)
    before = length_in_order.cumsum(dim=1) - length_in_order  # tokens chosen before each unit
    take = (before < token_budget(candidate, mask_rate)) & (length_in_order > 0)
    chosen_first = torch.zeros_like(take).scatter_(1, order, take)
    return chosen_first.gather(1, unit_first) & candidate
