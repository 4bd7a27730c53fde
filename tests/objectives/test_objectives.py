"""Every pre-training objective: loss, gradients, evaluation, and that it can learn."""

import math

import pytest
import torch
import torch.nn.functional as F

from pretrainer.config import ObjectiveConfig
from pretrainer.errors import PretrainerError
from pretrainer.models import SequenceClassifier
from pretrainer.objectives import ClassificationObjective
from pretrainer.registry import OBJECTIVES

PAD, CLS, SEP, MASK = 0, 1, 2, 3  # as in conftest.py
VOCAB = 61
PRETRAINING = {"mlm": "bert", "mlm_nsp": "bert", "clm": "gpt"}  # objective -> a model it trains


def make_batch(kind: str, b=4, t=16, seed=0) -> dict:
    """The batch layouts of ARCHITECTURE.md, filled with random ordinary tokens (ids >= 4)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "clm":
        return {"input_ids": torch.randint(4, VOCAB, (b, t + 1), generator=g)}
    ids = torch.randint(4, VOCAB, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    batch = {"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.bool),
             "special_tokens_mask": (ids == CLS) | (ids == SEP),
             "word_starts": torch.rand(b, t, generator=g) < 0.6}
    if kind == "mlm_nsp":
        batch["token_type_ids"] = (torch.arange(t) >= t // 2).long().expand(b, t).clone()
        batch["next_sentence_label"] = torch.randint(0, 2, (b,), generator=g)
    return batch


def objective_and_model(name, tokenizer, make_model, **cfg):
    objective = OBJECTIVES.get(name)(ObjectiveConfig(name=name, **cfg), tokenizer)
    return objective, objective.build(make_model(PRETRAINING[name])).train()


@pytest.mark.parametrize("name", sorted(PRETRAINING))
def test_step_output_and_gradients(name, tokenizer, make_model):
    objective, model = objective_and_model(name, tokenizer, make_model)
    assert objective.batch_layout == name
    out = objective(model, make_batch(name))
    assert out["loss"].dim() == 0 and out["loss"].requires_grad and torch.isfinite(out["loss"])
    assert isinstance(out["n_tokens"], int) and out["n_tokens"] == 4 * 16
    for k, v in out.items():
        if k not in ("loss", "n_tokens"):
            assert isinstance(v, torch.Tensor) and not v.requires_grad and v.dim() == 0, k
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if name == "mlm":
        assert 0 <= out["mlm_acc"] <= 1
    if name == "mlm_nsp":
        assert {"mlm_acc", "nsp_acc"} <= out.keys()
        assert model.nsp_head.weight.grad is not None and model.backbone.pooler.weight.grad is not None


@pytest.mark.parametrize("whole_word", [False, True])
def test_mlm_loss_equals_the_slow_reference(whole_word, tokenizer, make_model):
    objective, model = objective_and_model("mlm", tokenizer, make_model, whole_word=whole_word)
    model.eval()
    batch = make_batch("mlm", b=6, t=20)
    torch.manual_seed(123)
    fast = objective(model, batch)["loss"]
    torch.manual_seed(123)  # the same masks again, from the global RNG
    masked, labels = objective.mask(batch)
    logits = model.lm_logits(model(masked, batch["attention_mask"]))  # (B, T, V) at every position
    slow = F.cross_entropy(logits.view(-1, VOCAB), labels.view(-1), ignore_index=-100)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_mlm_nsp_loss_is_the_weighted_sum(tokenizer, make_model):
    objective, model = objective_and_model("mlm_nsp", tokenizer, make_model, nsp_weight=0.5)
    model.eval()
    batch = make_batch("mlm_nsp")
    out = objective(model, batch)
    torch.testing.assert_close(out["loss"], out["mlm_loss"] + 0.5 * out["nsp_loss"])
    hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    nsp = F.cross_entropy(model.nsp_head(model.pooled(hidden, None, "cls")), batch["next_sentence_label"])
    torch.testing.assert_close(out["nsp_loss"], nsp)  # [CLS] is never masked, so the same pooled vector


def test_clm_loss_equals_the_reference_and_skips_pad_targets(tokenizer, make_model):
    objective, model = objective_and_model("clm", tokenizer, make_model)
    model.eval()
    batch = make_batch("clm", b=3, t=12)
    ids = batch["input_ids"]
    ref = F.cross_entropy(model.lm_logits(model(ids[:, :-1])).reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(objective(model, batch)["loss"], ref)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, 8:] = False
    padded = objective(model, {"input_ids": ids, "attention_mask": mask})["loss"]
    logits = model.lm_logits(model(ids[:, :-1]))
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    torch.testing.assert_close(padded, F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))


@pytest.mark.parametrize("name", sorted(PRETRAINING))
def test_evaluate_is_repeatable_and_restores_train_mode(name, tokenizer, make_model):
    objective, model = objective_and_model(name, tokenizer, make_model)
    batches = [make_batch(name, seed=s) for s in range(3)]
    rng = torch.get_rng_state()
    first = objective.evaluate(model, batches)
    second = objective.evaluate(model, iter(batches))  # any iterable, consumed once
    assert first == second
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)  # the training RNG stream is untouched
    assert all(isinstance(v, float) and math.isfinite(v) for v in first.values())
    expected = {"mlm": {"mlm_loss", "mlm_acc", "mlm_ppl"}, "clm": {"loss", "ppl"},
                "mlm_nsp": {"mlm_loss", "mlm_acc", "mlm_ppl", "nsp_acc"}}[name]
    assert expected <= first.keys()
    loss_key = "loss" if name == "clm" else "mlm_loss"
    assert first[loss_key.replace("loss", "ppl")] == pytest.approx(math.exp(first[loss_key]))


def test_mlm_needs_a_mask_token(tokenizer):
    tokenizer.mask_id = None
    with pytest.raises(PretrainerError, match="MASK"):
        OBJECTIVES.get("mlm")(ObjectiveConfig(), tokenizer)


@pytest.mark.parametrize("name", sorted(PRETRAINING))
def test_tiny_model_overfits_a_tiny_batch(name, tokenizer, make_model):
    torch.manual_seed(0)
    objective, model = objective_and_model(name, tokenizer, make_model)
    batch = make_batch(name, b=4, t=12)
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-2)
    losses = []
    for _ in range(50):
        torch.manual_seed(1)  # the same masks every step: memorise one fixed problem
        loss = objective(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = losses[0], sum(losses[-5:]) / 5
    assert last < 0.1 * first, (first, last)


def classification_batch(b=6, t=10, seed=0, num_labels=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 6:] = False
    ids[~mask] = PAD
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, num_labels, (b,), generator=g)}


@pytest.mark.parametrize("backbone", ["bert", "gpt"])
def test_classification(backbone, make_model):
    model = SequenceClassifier(make_model(backbone), 3).train()
    objective = ClassificationObjective(3)
    batch = classification_batch()
    out = objective(model, batch)
    assert out["loss"].requires_grad and 0 <= out["acc"] <= 1 and isinstance(out["n_tokens"], int)
    out["loss"].backward()
    assert model.head.weight.grad is not None

    batches = [classification_batch(seed=s) for s in range(3)]
    metrics = objective.evaluate(model, batches)
    assert model.training and set(metrics) == {"loss", "accuracy", "macro_f1"}
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(bt) for bt in batches])
    labels = torch.cat([bt["labels"] for bt in batches])
    assert metrics["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert 0 <= metrics["macro_f1"] <= 1


def test_classification_is_not_a_pretraining_objective(tokenizer):
    with pytest.raises(PretrainerError, match="finetune"):
        OBJECTIVES.get("classification")(ObjectiveConfig(name="classification"), tokenizer)
