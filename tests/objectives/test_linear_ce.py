"""The chunked vocabulary projection + cross-entropy against PyTorch's plain one."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from pretrainer.objectives import linear_ce
from pretrainer.objectives.linear_ce import linear_cross_entropy


def _inputs(n=37, c=16, v=101, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(v, c, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(v, generator=g, dtype=torch.float64).requires_grad_() if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    with torch.no_grad():
        targets[1::3] = F.linear(hidden, weight, b).argmax(dim=1)[1::3]  # rows the "model" gets right
    targets[::5] = -100  # ignored rows
    return hidden, weight, b, targets


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_elements", [1 << 25, 300])  # one chunk; many chunks of 2 rows
def test_loss_gradients_and_predictions_match_plain_cross_entropy(monkeypatch, bias, chunk_elements):
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMENTS", chunk_elements)
    hidden, weight, b, targets = _inputs(bias=bias)
    logits = F.linear(hidden, weight, b)
    expected = F.cross_entropy(logits, targets, ignore_index=-100)
    loss, hits = linear_cross_entropy(hidden, weight, targets, b)
    torch.testing.assert_close(loss, expected)
    assert torch.equal(hits, (logits.argmax(dim=1) == targets) & (targets != -100)) and 5 <= int(hits.sum()) < 37
    for got, want in zip(_grads(loss * 3.0, (hidden, weight, b)), _grads(expected * 3.0, (hidden, weight, b))):
        torch.testing.assert_close(got, want)


def test_only_the_inputs_that_need_gradients_get_them():
    hidden, weight, _, targets = _inputs(bias=False)
    frozen = weight.detach()
    loss, _ = linear_cross_entropy(hidden, frozen, targets)
    (grad,) = torch.autograd.grad(loss, [hidden])
    expected = F.cross_entropy(F.linear(hidden, frozen), targets, ignore_index=-100)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, [hidden])[0])
    with torch.no_grad():
        loss, _ = linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(loss, expected.detach())


def test_all_targets_ignored_gives_zero_loss_and_zero_gradients():
    hidden, weight, b, targets = _inputs()
    loss, _ = linear_cross_entropy(hidden, weight, torch.full_like(targets, -100), b)
    assert float(loss.detach()) == 0.0
    assert all(float(g.abs().sum()) == 0.0 for g in _grads(loss, (hidden, weight, b)))


def test_gpt_causal_lm_loss_and_tied_embedding_gradient_match_the_plain_head(make_model):
    from pretrainer.config import ObjectiveConfig
    from pretrainer.objectives import CausalLM

    model = make_model("gpt").eval()
    ids = torch.randint(5, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    loss = CausalLM(ObjectiveConfig(name="clm"))(model, {"input_ids": ids})["loss"]
    (grad,) = torch.autograd.grad(loss, [model.wte.weight])  # embedding lookup + tied head, summed
    logits = model.lm_logits(model(ids[:, :-1]))
    expected = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, [model.wte.weight])[0])


def test_no_rows_gives_zero_loss_and_zero_gradients():
    hidden, weight, b, _ = _inputs()
    loss, hits = linear_cross_entropy(hidden[:0], weight, torch.zeros(0, dtype=torch.long), b)
    assert float(loss.detach()) == 0.0 and hits.shape == (0,)
    assert all(float(g.abs().sum()) == 0.0 for g in _grads(loss, (weight, b)))


class _MatmulShapes(TorchDispatchMode):
    """Records the output shape of every matrix multiply that runs under it."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_, torch.ops.aten.bmm):
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("bias", [True, False])
def test_autocast_runs_chunked_and_matches_full_logits(monkeypatch, bias):
    # bf16 on this CPU is emulated and slow: a tiny shape, several chunks of 4 rows.
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMENTS", 4 * 101)
    hidden, weight, b, targets = (t if t is None or t.dtype == torch.long else t.detach().float().requires_grad_()
                                  for t in _inputs(bias=bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy(F.linear(hidden, weight, b).float(), targets, ignore_index=-100)
        with _MatmulShapes() as seen:
            loss, hits = linear_cross_entropy(hidden, weight, targets, b)
    assert loss.dtype == torch.float32
    assert seen.shapes and max(rows for rows, cols in seen.shapes if cols == 101) <= 4  # never (37, 101)
    torch.testing.assert_close(loss, expected, rtol=1e-2, atol=1e-2)
    for got, want in zip(_grads(loss, (hidden, weight, b)), _grads(expected, (hidden, weight, b))):
        assert got.dtype == torch.float32  # gradients come back in the parameters' dtype
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)
    logits = F.linear(hidden, weight, b)
    # bf16 logits can tie or swap near-equal maxima; most predictions must agree with fp32
    agree = (hits == ((logits.argmax(dim=1) == targets) & (targets != -100))).float().mean()
    assert agree >= 0.9


@pytest.mark.parametrize("grad_mode", ["no_grad", "nothing_requires_grad"])
def test_evaluation_does_no_backward_work(monkeypatch, grad_mode):
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMENTS", 8 * 101)  # 5 chunks of 8 rows
    hidden, weight, b, targets = _inputs()
    trained_loss, trained_hits = linear_cross_entropy(hidden, weight, targets, b)
    with _MatmulShapes() as training:
        linear_cross_entropy(hidden, weight, targets, b)
    if grad_mode == "nothing_requires_grad":
        hidden, weight, b = hidden.detach(), weight.detach(), b.detach()
    context = torch.no_grad() if grad_mode == "no_grad" else torch.enable_grad()
    with context, _MatmulShapes() as evaluation:
        loss, hits = linear_cross_entropy(hidden, weight, targets, b)
    # Forward only: one matmul per chunk (the logits), none for d hidden or d weight.
    assert evaluation.shapes == [(8, 101)] * 4 + [(5, 101)]
    assert len(training.shapes) == 3 * 5
    assert loss.grad_fn is None and not loss.requires_grad
    assert weight.grad is None and hidden.grad is None
    assert torch.equal(loss, trained_loss.detach()) and torch.equal(hits, trained_hits)
