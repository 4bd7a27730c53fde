"""A linear-chain CRF over word tags: learned tag-to-tag transition scores on top of a tagger's
per-word scores, trained by the sequence log-likelihood and decoded by Viterbi.

A softmax tagger picks each word's tag alone, so it can emit `O I-PER` or `B-ORG I-LOC`, spans
that exact-match entity scoring counts as wrong. The CRF scores whole tag sequences, and
transitions the tagging scheme forbids are fixed at a very low score, so decoding only ever
yields well-formed spans (Lample et al. 2016 put a CRF on a BiLSTM tagger for this reason).

All sequences are left-aligned: `mask` (B, L) is True on a prefix of each row.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

FORBIDDEN = -1e4  # added to forbidden transitions; exp() of it underflows to 0 in fp32


class LinearChainCRF(nn.Module):
    def __init__(self, num_tags: int):
        super().__init__()
        self.num_tags = num_tags
        # Start at zero: the first steps train like the softmax tagger, then transitions grow.
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        # Which moves are allowed; saved with the weights so a reloaded tagger decodes the same.
        self.register_buffer("allowed", torch.ones(num_tags, num_tags, dtype=torch.bool))
        self.register_buffer("allowed_start", torch.ones(num_tags, dtype=torch.bool))

    def restrict_to_iob2(self, tag_names: Sequence[str], observed: Iterable[Sequence[int]] = ()) -> int:
        """Forbid what IOB2 forbids: `I-X` first, or after anything but `B-X` / `I-X`.

        A move seen in `observed` (the training tag sequences, as indices) stays allowed, so
        data in IOB1, where `I-X` may open an entity, keeps the moves its gold tags use.
        Returns the number of forbidden transitions.
        """
        if len(tag_names) != self.num_tags:
            raise ValueError(f"{len(tag_names)} tag names for a CRF over {self.num_tags} tags")
        allowed = torch.ones(self.num_tags, self.num_tags, dtype=torch.bool)
        allowed_start = torch.ones(self.num_tags, dtype=torch.bool)
        for j, to in enumerate(tag_names):
            if to.startswith("I-"):
                allowed_start[j] = False
                kind = to[2:]
                for i, before in enumerate(tag_names):
                    allowed[i, j] = before in (f"B-{kind}", f"I-{kind}")
        for tags in observed:
            if len(tags):
                allowed_start[tags[0]] = True
            for before, to in zip(tags, tags[1:]):
                allowed[before, to] = True
        self.allowed.copy_(allowed)
        self.allowed_start.copy_(allowed_start)
        return int((~allowed).sum())

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        transitions = self.transitions.float().masked_fill(~self.allowed, FORBIDDEN)
        start = self.start.float().masked_fill(~self.allowed_start, FORBIDDEN)
        return transitions, start

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(tags | emissions) per sequence: emissions (B, L, K), tags and mask (B, L) -> (B,).

        A row without any word gets 0.
        """
        emissions = emissions.float()
        transitions, start = self._scores()
        tags = tags.masked_fill(~mask, 0)  # padding may hold IGNORE_INDEX; it is masked out below
        lengths = mask.sum(dim=1)  # (B,)
        rows = torch.arange(emissions.shape[0], device=emissions.device)

        # Score of the gold path.
        emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, L)
        moved = transitions[tags[:, :-1], tags[:, 1:]]  # (B, L-1)
        last = tags[rows, (lengths - 1).clamp(min=0)]
        gold = (start[tags[:, 0]] + (emitted * mask).sum(dim=1) + (moved * mask[:, 1:]).sum(dim=1)
                + self.end.float()[last])

        # Log-sum over all paths (the forward algorithm).
        alpha = start + emissions[:, 0]  # (B, K)
        for i in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1) + emissions[:, i]
            alpha = torch.where(mask[:, i:i + 1], step, alpha)
        log_partition = torch.logsumexp(alpha + self.end.float(), dim=1)
        return (gold - log_partition) * (lengths > 0)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The highest-scoring tag sequence (Viterbi): (B, L, K) -> (B, L) tag ids, valid under mask."""
        emissions = emissions.float()
        transitions, start = self._scores()
        batch, length, k = emissions.shape
        keep = torch.arange(k, device=emissions.device).expand(batch, k)  # a padded step keeps its tag
        score = start + emissions[:, 0]  # (B, K)
        back = []
        for i in range(1, length):
            best, previous = (score.unsqueeze(2) + transitions).max(dim=1)  # over the tag before
            live = mask[:, i:i + 1]
            score = torch.where(live, best + emissions[:, i], score)
            back.append(torch.where(live, previous, keep))
        tag = (score + self.end.float()).argmax(dim=1)  # (B,)
        path = [tag]
        for previous in reversed(back):
            tag = previous.gather(1, tag.unsqueeze(1)).squeeze(1)
            path.append(tag)
        return torch.stack(path[::-1], dim=1)
