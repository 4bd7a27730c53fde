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
