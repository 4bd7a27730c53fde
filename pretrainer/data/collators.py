"""Batch-time transforms of token tensors: BERT's masked-language-model corruption."""

from __future__ import annotations

import functools
from typing import Sequence

import torch

IGNORE_INDEX = -100  # label value that cross_entropy skips


def mask_tokens(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, *, mask_id: int,
                vocab_size: int, mask_rate: float = 0.15, mask_token_rate: float = 0.8,
                random_token_rate: float = 0.1, word_starts: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                special_ids: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose tokens to predict and corrupt them: input_ids (B, T) -> (masked_ids, labels), both (B, T).

    Per sequence exactly max(1, round(mask_rate * n)) of its n candidate words are chosen (a
    fixed count as in BERT, so short sequences still get a target); special tokens are never
    chosen. Without `word_starts` every token is its own word; with it (True where a token
    starts a word) all sub-tokens of a chosen word are chosen together. Each chosen token
    becomes [MASK] with probability mask_token_rate, a random token with random_token_rate,
    and stays unchanged otherwise. Random tokens avoid mask_id, `special_ids` and any id
    found at a special position of this batch. labels hold the original id at chosen
    positions and -100 elsewhere.

    Randomness comes from `generator` (drawn on its device) or else torch's global RNG, and
    the number of draws depends only on the batch shape.
    """
    B, T = input_ids.shape
    device = input_ids.device
    special = special_tokens_mask.bool()
    candidate = ~special

    def uniform() -> torch.Tensor:
        on = generator.device if generator is not None else device
        return torch.rand(B, T, generator=generator, device=on).to(device)

    # Word boundaries: a special token is a word of its own and the token after it starts a
    # new word, so a word cut off by packing never merges with [CLS] or [SEP].
    starts = torch.ones_like(special) if word_starts is None else word_starts.bool().clone()
    starts |= special
    starts[:, 1:] |= special[:, :-1]
    starts[:, 0] = True
    word_candidate = starts & candidate  # (B, T): one True per candidate word, at its first token

    # Rank candidate words by a random score and keep the k best per row.
    scores = uniform().masked_fill(~word_candidate, 2.0)  # non-candidates sort last
    ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, T): rank of each position in its row
    n_words = word_candidate.sum(dim=1, keepdim=True)  # (B, 1)
    k = torch.round(n_words * mask_rate).clamp(min=1).minimum(n_words)
    chosen_start = word_candidate & (ranks < k)

    # Spread each word's choice to its sub-tokens: index of the word's first token per position.
    positions = torch.arange(T, device=device).expand(B, T)
    word_first = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
    chosen = chosen_start.gather(1, word_first) & candidate  # (B, T)

    return corrupt_chosen(input_ids, special_tokens_mask, chosen, mask_id=mask_id, vocab_size=vocab_size,
                          mask_token_rate=mask_token_rate, random_token_rate=random_token_rate,
                          generator=generator, special_ids=special_ids)


def corrupt_chosen(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, chosen: torch.Tensor, *,
                   mask_id: int, vocab_size: int, mask_token_rate: float = 0.8, random_token_rate: float = 0.1,
                   generator: torch.Generator | None = None,
                   special_ids: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption of the `chosen` (B, T) positions -> (masked_ids, labels); see
    `mask_tokens`, which chooses whole words, and data/masking.py (spans, lexicon phrases)."""
    B, T = input_ids.shape
    device = input_ids.device
    special = special_tokens_mask.bool()

    def uniform() -> torch.Tensor:
        on = generator.device if generator is not None else device
        return torch.rand(B, T, generator=generator, device=on).to(device)

    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)

    action = uniform()
    to_mask = chosen & (action < mask_token_rate)
    to_random = chosen & (action >= mask_token_rate) & (action < mask_token_rate + random_token_rate)

    # Random replacement ids, drawn uniformly from the allowed ones without a host round trip
    # (no nonzero / len): the pick-th allowed id is where the running count of allowed ids
    # first reaches pick + 1, so this is exactly `allowed.nonzero()[pick]`.
    allowed = _base_allowed(vocab_size, mask_id, tuple(special_ids or ()), device).clone()
    allowed.index_fill_(0, input_ids.masked_fill(~special, mask_id).flatten(), False)  # ids at special positions
    n_allowed = allowed.sum()
    nothing_allowed = n_allowed == 0  # degenerate tiny vocabularies: anything goes
    allowed |= nothing_allowed
    n_allowed = torch.where(nothing_allowed, vocab_size, n_allowed)
    pick = (uniform() * n_allowed).long().minimum(n_allowed - 1)  # (B, T)
    random_ids = torch.searchsorted(allowed.cumsum(0), pick + 1)  # (B, T)

    masked = input_ids.masked_fill(to_mask, mask_id)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


@functools.lru_cache(maxsize=16)
def _base_allowed(vocab_size: int, mask_id: int, special_ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(V,) bool: ids a random replacement may take before looking at the batch; cached so that
    the per-step path makes no host-to-device copy. Callers clone it before changing it."""
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[mask_id] = False
    if special_ids:
        allowed[torch.as_tensor(special_ids, device=device)] = False
    return allowed


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) in a sequence of `length` tokens, as T5 rounds them: at least
    one of each, and at least one kept token between spans."""
    n_noise = min(max(1, round(length * noise_density)), length - 1)
    n_spans = min(max(1, round(n_noise / mean_span_length)), n_noise, length - n_noise)
    return n_noise, n_spans


def _random_segments(B: int, n: int, m: int, uniform) -> torch.Tensor:
    """(B, m) lengths >= 1 summing to n: n items cut at m - 1 distinct random places."""
    if m == 1:
        return torch.full((B, 1), n, dtype=torch.long)
    scores = uniform(B, n - 1)  # a cut before item i + 1 for the m - 1 lowest scores
    cut = scores.argsort(dim=1).argsort(dim=1) < m - 1  # (B, n - 1)
    segment = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=cut.device), cut.long().cumsum(1)], dim=1)
    return torch.zeros(B, m, dtype=torch.long, device=cut.device).scatter_add_(1, segment, torch.ones_like(segment))


def noise_span_mask(B: int, length: int, noise_density: float, mean_span_length: float,
                    generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """T5's random spans: (noise (B, L) bool, span (B, L) long index of each token's segment pair).

    Every row has exactly `span_counts` noise tokens in that many spans, alternating with kept
    spans, kept first: keep_0 noise_0 keep_1 noise_1 ... noise_{m-1}. Span lengths are a
    uniformly random composition of the counts, so their mean is n_noise / n_spans."""
    n_noise, m = span_counts(length, noise_density, mean_span_length)

    def uniform(*shape: int) -> torch.Tensor:
        on = generator.device if generator is not None else device
        return torch.rand(*shape, generator=generator, device=on).to(device)

    noise_lengths = _random_segments(B, n_noise, m, uniform)
    keep_lengths = _random_segments(B, length - n_noise, m, uniform)
    ends = torch.stack([keep_lengths, noise_lengths], dim=2).flatten(1).cumsum(1)  # (B, 2m) segment ends
    positions = torch.arange(length, device=device).expand(B, length).contiguous()
    segment = torch.searchsorted(ends, positions, right=True)  # (B, L): keep_i = 2i, noise_i = 2i + 1
    return segment % 2 == 1, segment // 2


def corrupt_spans(input_ids: torch.Tensor, sentinel_ids: Sequence[int], eos_id: int, *, noise_density: float = 0.15,
                  mean_span_length: float = 3.0,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's span corruption: input_ids (B, L) -> (inputs (B, L - n + m + 1), targets (B, n + m + 1)).

    Each of the m noise spans (n tokens in all) is replaced in the input by one sentinel, the
    i-th span by sentinel_ids[i]; the target lists each sentinel followed by the tokens it
    replaced. Both end with eos_id. Every row has the same n and m, so no padding is needed.
    """
    B, L = input_ids.shape
    n_noise, m = span_counts(L, noise_density, mean_span_length)
    if m > len(sentinel_ids):
        raise ValueError(f"{m} noise spans need {m} sentinels; the tokenizer has {len(sentinel_ids)}")
    noise, span = noise_span_mask(B, L, noise_density, mean_span_length, generator, input_ids.device)
    sentinels = torch.as_tensor(list(sentinel_ids[:m]), device=input_ids.device)[span]  # (B, L)
    starts = noise.clone()
    starts[:, 1:] &= ~noise[:, :-1]  # the first token of each noise span
    # Two slots per position: a sentinel where a span starts, then the token itself. Inputs keep
    # the sentinel slot at span starts and kept tokens; targets the sentinel slot and noise tokens.
    slots = torch.stack([sentinels, input_ids], dim=2).flatten(1)  # (B, 2L)
    eos = torch.full((B, 1), eos_id, dtype=input_ids.dtype, device=input_ids.device)
    keep_in_input = torch.stack([starts, ~noise], dim=2).flatten(1)
    keep_in_target = torch.stack([starts, noise], dim=2).flatten(1)
    inputs = torch.cat([slots[keep_in_input].view(B, L - n_noise + m), eos], dim=1)
    targets = torch.cat([slots[keep_in_target].view(B, n_noise + m), eos], dim=1)
    return inputs, targets
