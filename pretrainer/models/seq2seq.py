"""Decoding for an encoder–decoder: greedy, sampled, and beam search.

Each works on any model with `encode(ids, mask) -> memory`, `decode(ids, memory, mask) -> hidden`
and `decoder_logits(hidden)`. The encoder runs once; the decoder re-reads its whole prefix each
step (no key/value cache), which is fine at the sizes this library trains on a CPU.
A row that has emitted eos_id is finished: it is padded with `pad_id` (default eos_id) from then on.
`suppress_ids` are never emitted (a fine-tuned text-to-text model must not write span
corruption's sentinels, or the start token, into its text).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrainer.models.decoder import filter_logits


def _next_logits(model, prefix: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None,
                 suppress_ids=()) -> torch.Tensor:
    """(N, t) decoder prefix -> (N, V) float32 logits for the next token."""
    logits = model.decoder_logits(model.decode(prefix, memory, mask)[:, -1]).float()
    if len(suppress_ids):
        logits[:, list(suppress_ids)] = float("-inf")
    return logits


@torch.no_grad()
def greedy_or_sample(model, input_ids: torch.Tensor, max_new_tokens: int, *, start_id: int,
                     eos_id: int | None = None, pad_id: int | None = None,
                     attention_mask: torch.Tensor | None = None, greedy: bool = True, temperature: float = 1.0,
                     top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                     suppress_ids=()) -> torch.Tensor:
    """input_ids (B, S) -> (B, 1 + n) decoder tokens, start_id first, n <= max_new_tokens."""
    was_training = model.training
    model.eval()
    pad_id = eos_id if pad_id is None else pad_id
    memory = model.encode(input_ids, attention_mask)  # (B, S, C)
    out = torch.full((input_ids.shape[0], 1), start_id, dtype=torch.long, device=input_ids.device)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = _next_logits(model, out, memory, attention_mask, suppress_ids)  # (B, V)
        if greedy:
            next_id = logits.argmax(dim=-1)
        else:
            probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
            on = generator.device if generator is not None else probs.device
            next_id = torch.multinomial(probs.to(on), 1, generator=generator).squeeze(1).to(out.device)
        if eos_id is not None:
            next_id = torch.where(finished, torch.full_like(next_id, pad_id), next_id)
            finished |= next_id == eos_id
        out = torch.cat([out, next_id[:, None]], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return out


@torch.no_grad()
def beam_search(model, input_ids: torch.Tensor, max_new_tokens: int, *, start_id: int, eos_id: int | None = None,
                pad_id: int | None = None, attention_mask: torch.Tensor | None = None, num_beams: int = 4,
                length_penalty: float = 1.0, suppress_ids=()) -> torch.Tensor:
    """input_ids (B, S) -> (B, 1 + n): per row the best of `num_beams` hypotheses by
    sum of log-probabilities / length ** length_penalty.

    A row stops once `num_beams` hypotheses have ended in eos_id (each step keeps the best
    `num_beams` continuations that do not end, from the top 2 * num_beams); at max_new_tokens
    the unfinished beams compete too. With one beam this is greedy decoding exactly.
    """
    was_training = model.training
    model.eval()
    B, K = input_ids.shape[0], num_beams
    device = input_ids.device
    pad_id = (eos_id if eos_id is not None else start_id) if pad_id is None else pad_id
    memory = model.encode(input_ids, attention_mask).repeat_interleave(K, dim=0)  # (B*K, S, C)
    mask = None if attention_mask is None else attention_mask.repeat_interleave(K, dim=0)
    beams = torch.full((B * K, 1), start_id, dtype=torch.long, device=device)
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # all beams start equal: only the first is expanded
    hypotheses: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_new_tokens):
        logprobs = F.log_softmax(_next_logits(model, beams, memory, mask, suppress_ids), dim=-1)  # (B*K, V)
        V = logprobs.shape[-1]
        candidates = (scores.view(B * K, 1) + logprobs).view(B, K * V)
        top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=1)  # (B, 2K)
        next_beams, next_scores = [], torch.full((B, K), float("-inf"), device=device)
        for b in range(B):
            kept = []
            if not done[b]:
                for rank, (score, index) in enumerate(zip(top_scores[b].tolist(), top_index[b].tolist())):
                    source, token = divmod(index, V)
                    prefix = beams[b * K + source, 1:].tolist()
                    if eos_id is not None and token == eos_id:
                        if rank < K:  # an eos below the top K is no better than what continues
                            hypotheses[b].append((score / (len(prefix) + 1) ** length_penalty, prefix + [token]))
                        continue
                    kept.append((score, b * K + source, token))
                    if len(kept) == K:
                        break
                done[b] = len(hypotheses[b]) >= K
            while len(kept) < K:  # a finished row keeps dummy beams, never read again
                kept.append((float("-inf"), b * K, pad_id))
            for k, (score, source, token) in enumerate(kept):
                next_scores[b, k] = score
                next_beams.append((source, token))
        sources = torch.tensor([s for s, _ in next_beams], device=device)
        tokens = torch.tensor([t for _, t in next_beams], device=device)
        beams = torch.cat([beams[sources], tokens[:, None]], dim=1)
        scores = next_scores
        if all(done):
            break
    for b in range(B):
        if not done[b]:  # the length limit: unfinished beams compete with the finished ones
            for k in range(K):
                if scores[b, k] > float("-inf"):
                    prefix = beams[b * K + k, 1:].tolist()
                    hypotheses[b].append((float(scores[b, k]) / max(len(prefix), 1) ** length_penalty, prefix))
    best = [max(h, key=lambda item: item[0])[1] for h in hypotheses]
    out = torch.full((B, 1 + max(map(len, best))), pad_id, dtype=torch.long, device=device)
    out[:, 0] = start_id
    for b, tokens in enumerate(best):
        out[b, 1:1 + len(tokens)] = torch.tensor(tokens, dtype=torch.long, device=device)
    model.train(was_training)
    return out
