"""Cross-entropy over a vocabulary projection without materialising all the logits.

`loss = cross_entropy(hidden @ weight.T + bias, targets)` for (N, C) hidden states and a
(V, C) output matrix. Done plainly, autograd keeps the (N, V) log-probabilities for the
backward pass and then makes several more passes over tensors that size (zero-filled
gradient, scatter, log-softmax backward): for GPT-2's 50,257-word vocabulary and a batch of
32 x 128 tokens that is 823 MB per tensor. Here the rows are processed in chunks, and each
chunk's gradients are taken right away from its softmax (d loss / d logits = softmax -
one-hot), so only one chunk of logits exists at a time and the backward pass is a
multiplication by the incoming gradient. When no gradient is wanted (evaluation under
`torch.no_grad`, or nothing requires grad) only the forward half of each chunk runs.
"""

from __future__ import annotations

import contextlib

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
    is several times slower than a max on the CPU). Under autocast the projections run in
    autocast's dtype, as `F.linear` would, and the softmax in fp32; gradients come back in
    the inputs' dtypes (the weight's summed over chunks in its own dtype).
    """
    device_type = hidden.device.type
    compute_dtype = None
    scope = contextlib.nullcontext()
    if torch.is_autocast_enabled(device_type):
        # The dtypes are chosen here explicitly; autocast inside would only cast them again.
        compute_dtype = torch.get_autocast_dtype(device_type)
        scope = torch.autocast(device_type, enabled=False)
    with scope:
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
            return _LinearCrossEntropy.apply(hidden, weight, bias, targets, ignore_index, compute_dtype)
        # Evaluation: a Function's forward cannot tell no_grad from training (needs_input_grad
        # follows requires_grad), so the gradient work would run for nothing; skip it here.
        loss, hits, _ = _chunked_loss(hidden, weight, bias, targets, ignore_index, compute_dtype,
                                      want=(False, False, False))
        return loss, hits


def _chunked_loss(hidden, weight, bias, targets, ignore_index, compute_dtype, want):
    """-> (mean loss, hits, [d sum-loss / d hidden, weight, bias] or None where not in `want`)."""
    want_hidden, want_weight, want_bias = want
    want_bias = want_bias and bias is not None
    want_any = want_hidden or want_weight or want_bias
    n_rows, vocab = hidden.shape[0], weight.shape[0]
    chunk = max(1, CHUNK_ELEMENTS // vocab)
    if compute_dtype is not None:  # autocast: one low-precision copy of the (V, C) matrix
        weight_c = weight.to(compute_dtype)
        bias_c = None if bias is None else bias.to(compute_dtype)
    else:
        weight_c, bias_c = weight, bias
    grad_hidden = torch.empty_like(hidden) if want_hidden else None
    grad_weight = grad_bias = None  # the first chunk's gradients, then sums (no zero-filled start)
    loss_sum = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
    valid = targets != ignore_index
    n_valid = valid.sum()
    # One host read per call, not per chunk; only needed when gradients are taken.
    any_ignored = want_any and n_rows > 0 and not bool(valid.all())
    hits = torch.empty(n_rows, dtype=torch.bool, device=hidden.device)
    for start in range(0, n_rows, chunk):
        rows = slice(start, min(start + chunk, n_rows))
        h, t, ok = hidden[rows], targets[rows], valid[rows]
        if compute_dtype is not None:
            h = h.to(compute_dtype)
        logits = h @ weight_c.T  # (n, V)
        if bias_c is not None:
            logits += bias_c
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # softmax in at least fp32
        log_probs = torch.log_softmax(logits, dim=1)  # one fused pass; cheaper than logsumexp
        del logits
        safe_t = t.masked_fill(~ok, 0)  # any class for ignored rows; their terms are zeroed
        target_log_prob = log_probs.gather(1, safe_t[:, None]).squeeze(1)
        loss_sum -= (target_log_prob * ok).sum()
        hits[rows] = (target_log_prob >= log_probs.amax(dim=1)) & ok
        if not want_any:
            continue
        # d(sum of losses) / d logits = softmax - one_hot(target), zero on ignored rows; in place.
        grad_logits = log_probs.exp_()
        grad_logits[torch.arange(len(t), device=t.device), safe_t] -= 1.0
        if any_ignored:
            grad_logits *= ok[:, None]
        if want_bias:
            column_sums = grad_logits.sum(dim=0)  # before any cast: summed in fp32
            grad_bias = column_sums if grad_bias is None else grad_bias.add_(column_sums)
        grad_logits = grad_logits.to(h.dtype)
        if want_hidden:
            if grad_logits.dtype == grad_hidden.dtype:
                torch.mm(grad_logits, weight_c, out=grad_hidden[rows])
            else:
                grad_hidden[rows] = grad_logits @ weight_c
        if want_weight:
            if grad_weight is None:
                grad_weight = (grad_logits.T @ h).to(weight.dtype)
            elif grad_weight.dtype == grad_logits.dtype:
                grad_weight.addmm_(grad_logits.T, h)
            else:  # autocast: each chunk's product in the low precision, the sum in the weight's
                grad_weight += grad_logits.T @ h
    if n_rows == 0:  # no chunk ran: the gradients are zero
        grad_weight = torch.zeros_like(weight) if want_weight else None
        grad_bias = torch.zeros_like(bias) if want_bias else None
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    scale = 1.0 / n_valid.clamp_min(1).to(loss_sum.dtype)
    return loss_sum * scale, hits, (grad_hidden, grad_weight, grad_bias, scale)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, compute_dtype):
        loss, hits, (*grads, scale) = _chunked_loss(hidden, weight, bias, targets, ignore_index, compute_dtype,
                                                    want=ctx.needs_input_grad[:3])
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads), scale)
        ctx.has = tuple(g is not None for g in grads)
        ctx.mark_non_differentiable(hits)
        return loss, hits

    @staticmethod
    def backward(ctx, grad_loss, _grad_hits):
        *grads, scale = ctx.saved_tensors
        factor = grad_loss * scale
        out = [g * factor.to(g.dtype) if has else None for g, has in zip(grads, ctx.has)]
        return out[0], out[1], out[2], None, None, None
