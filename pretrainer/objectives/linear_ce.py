"""Cross-entropy over a vocabulary projection without materialising all the logits.

`loss = cross_entropy(hidden @ weight.T + bias, targets)` for (N, C) hidden states and a
(V, C) output matrix. Done plainly, autograd keeps the (N, V) log-probabilities for the
backward pass and then makes several more passes over tensors that size (zero-filled
gradient, scatter, log-softmax backward): for GPT-2's 50,257-word vocabulary and a batch of
32 x 128 tokens that is 823 MB per tensor. Here the rows are processed in chunks, and each
chunk's gradients are taken right away from its softmax (d loss / d logits = softmax -
one-hot), so only one chunk of logits exists at a time and the backward pass is a
multiplication by the incoming gradient.
"""

from __future__ import annotations

import torch

from pretrainer.data.collators import IGNORE_INDEX

# Rows per chunk: big enough that the three matmuls per chunk run at full speed and the
# (V, C) weight gradient is not re-read too often, small enough to bound the memory.
CHUNK_ELEMENTS = 1 << 25  # 128 MB of fp32 logits per chunk


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX):
    """Mean cross-entropy of `hidden @ weight.T (+ bias)` against `targets` over the rows whose
    target is not `ignore_index`; the same value and gradients as `F.cross_entropy` on the logits.

    hidden (N, C), weight (V, C), targets (N,), bias (V,) or None. Returns (loss, hits): hits
    (N,) bool says where the target has the highest logit (accuracy without an argmax, which
    is several times slower than a max on the CPU). Under autocast the plain path runs (the
    chunked one computes in the inputs' own dtype).
    """
    if torch.is_autocast_enabled(hidden.device.type):
        logits = torch.nn.functional.linear(hidden, weight, bias).float()
        loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index)
        with torch.no_grad():
            target_logit = logits.gather(1, targets.clamp_min(0)[:, None]).squeeze(1)
            return loss, (target_logit >= logits.amax(dim=1)) & (targets != ignore_index)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index):
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        chunk = max(1, CHUNK_ELEMENTS // vocab)
        need_grads = ctx.needs_input_grad[:3]
        want_hidden, want_weight, want_bias = need_grads[0], need_grads[1], bias is not None and need_grads[2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = grad_bias = None  # the first chunk's gradients, then sums (no zero-filled start)
        loss_sum = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        valid = targets != ignore_index
        n_valid = valid.sum()
        hits = torch.empty(n_rows, dtype=torch.bool, device=hidden.device)
        for start in range(0, n_rows, chunk):
            rows = slice(start, min(start + chunk, n_rows))
            h, t, ok = hidden[rows], targets[rows], valid[rows]
            logits = h @ weight.T
            if bias is not None:
                logits += bias
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()  # softmax in at least fp32
            log_probs = torch.log_softmax(logits, dim=1)  # one fused pass; cheaper than logsumexp
            del logits
            safe_t = t.masked_fill(~ok, 0)  # any class for ignored rows; their terms are zeroed
            target_log_prob = log_probs.gather(1, safe_t[:, None]).squeeze(1)
            loss_sum -= (target_log_prob * ok).sum()
            hits[rows] = (target_log_prob >= log_probs.amax(dim=1)) & ok
            if not (want_hidden or want_weight or want_bias):
                continue
            # d(sum of losses) / d logits = softmax - one_hot(target), zero on ignored rows; in place.
            grad_logits = log_probs.exp_()
            grad_logits[torch.arange(len(t), device=t.device), safe_t] -= 1.0
            if not bool(ok.all()):
                grad_logits *= ok[:, None]
            grad_logits = grad_logits.to(hidden.dtype)
            if want_hidden:
                torch.mm(grad_logits, weight, out=grad_hidden[rows])
            if want_weight:
                grad_weight = grad_logits.T @ h if grad_weight is None else grad_weight.addmm_(grad_logits.T, h)
            if want_bias:
                column_sums = grad_logits.sum(dim=0)
                grad_bias = column_sums if grad_bias is None else grad_bias.add_(column_sums)
        if n_rows == 0:  # no chunk ran: the gradients are zero
            grad_weight = torch.zeros_like(weight) if want_weight else None
            grad_bias = torch.zeros_like(bias) if want_bias else None
        scale = 1.0 / n_valid.clamp_min(1).to(loss_sum.dtype)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (grad_hidden, grad_weight,
                                                                                 grad_bias)), scale)
        ctx.has = tuple(g is not None for g in (grad_hidden, grad_weight, grad_bias))
        ctx.mark_non_differentiable(hits)
        return loss_sum * scale, hits

    @staticmethod
    def backward(ctx, grad_loss, _grad_hits):
        *grads, scale = ctx.saved_tensors
        factor = grad_loss * scale
        out = [g * factor.to(g.dtype) if has else None for g, has in zip(grads, ctx.has)]
        return out[0], out[1], out[2], None, None
