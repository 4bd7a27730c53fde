import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import LoraConfig
from pretrainer.errors import PretrainerError
from pretrainer.models.heads import SequenceClassifier
from pretrainer.transfer.lora import (LoraLinear, apply_lora, count_parameters, describe_trainable,
                                      merge_lora)

MODELS = ["bert", "gpt"]
NUM_LABELS = 3
RANK = 4


def lora_config(**overrides) -> LoraConfig:
    kw = dict(rank=RANK, alpha=8.0, dropout=0.0)
    kw.update(overrides)
    return LoraConfig(**kw)


def make_classifier(make_model, name: str) -> SequenceClassifier:
    pooling = "cls" if name == "bert" else "last"
    return SequenceClassifier(make_model(name), NUM_LABELS, pooling, dropout=0.0).eval()


def random_batch(seed: int = 0, B: int = 4, T: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 7:] = 0  # one padded row, so the masked attention path runs too
    return {"input_ids": torch.randint(0, 61, (B, T), generator=g),
            "attention_mask": mask,
            "labels": torch.randint(0, NUM_LABELS, (B,), generator=g)}


def train_a_few_steps(model: nn.Module, steps: int = 4) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    for step in range(steps):
        batch = random_batch(seed=step)
        loss = F.cross_entropy(model(batch), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("name", MODELS)
def test_adapted_model_starts_exactly_at_the_original(make_model, name):
    model = make_classifier(make_model, name)
    batch = random_batch()
    before = model(batch)
    apply_lora(model, lora_config(dropout=0.1))
    assert torch.equal(model(batch), before)  # B = 0, so the update is exactly zero
    adapted = [n for n, m in model.named_modules() if isinstance(m, LoraLinear)]
    assert len(adapted) == 4 * model.backbone.n_layers
    assert all(n.endswith(("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")) for n in adapted)


@pytest.mark.parametrize("name", MODELS)
def test_training_moves_only_adapters_and_listed_prefixes(make_model, name):
    model = apply_lora(make_classifier(make_model, name), lora_config(), trainable=("head.",))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_a_few_steps(model)
    for n, p in model.named_parameters():
        if ".lora_" in n or n.startswith("head."):
            assert p.requires_grad, n
            assert not torch.equal(p, before[n]), f"{n} did not change"
        else:
            assert not p.requires_grad and p.grad is None, n
            assert torch.equal(p, before[n]), f"frozen {n} changed"


@pytest.mark.parametrize("name", MODELS)
def test_head_stays_frozen_unless_listed(make_model, name):
    model = apply_lora(make_classifier(make_model, name), lora_config())
    assert not any(p.requires_grad for p in model.head.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_merge_restores_plain_linears_and_outputs(make_model, name):
    model = make_classifier(make_model, name)
    original_keys = list(model.state_dict())
    apply_lora(model, lora_config(), trainable=("head.",))
    assert "backbone.blocks.0.attn.qkv.lora_a" in model.state_dict()
    train_a_few_steps(model)
    batch = random_batch(seed=99)
    adapted_out = model(batch)

    merge_lora(model)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert list(model.state_dict()) == original_keys
    assert type(model.backbone.blocks[0].attn.qkv) is nn.Linear
    torch.testing.assert_close(model(batch), adapted_out, atol=1e-5, rtol=0)
    # merging ends adaptation: the base layers stay frozen, the listed head stays trainable
    assert not model.backbone.blocks[0].mlp.fc.weight.requires_grad
    assert model.head.weight.requires_grad


def test_merged_linear_keeps_dtype_and_matches_the_formula():
    base = nn.Linear(6, 5).double()
    layer = LoraLinear(base, rank=2, alpha=3.0)
    with torch.no_grad():
        layer.lora_b.normal_()
    merged = layer.merged()
    assert merged.weight.dtype == torch.float64 and merged.weight.device == base.weight.device
    torch.testing.assert_close(merged.weight, base.weight + 1.5 * layer.lora_b @ layer.lora_a)
    torch.testing.assert_close(merged.bias, base.bias)
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(merged(x), layer(x))
    assert layer.weight is base.weight and layer.bias is base.bias


def test_gpt_language_model_stays_causal_after_merge(make_model):
    model = apply_lora(make_model("gpt"), lora_config())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLinear):
                m.lora_b.normal_(std=0.1)
    ids = torch.randint(0, 61, (2, 12))
    logits = model.lm_logits(model(ids))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 61
    # a later token never changes an earlier position's output
    torch.testing.assert_close(model.lm_logits(model(changed))[:, :8], logits[:, :8])
    merge_lora(model)
    torch.testing.assert_close(model.lm_logits(model(ids)), logits, atol=1e-5, rtol=0)


def test_count_parameters_by_hand(make_model):
    d, d_ff, vocab, max_len, layers = 32, 128, 61, 24, 2  # conftest's tiny config
    block = (2 * 2 * d                      # ln_1, ln_2
             + d * 3 * d + 3 * d            # attn.qkv
             + d * d + d                    # attn.proj
             + d * d_ff + d_ff              # mlp.fc
             + d_ff * d + d)                # mlp.proj
    adapters_per_block = RANK * ((d + 3 * d) + (d + d) + (d + d_ff) + (d_ff + d))  # r (in + out) each

    gpt = make_model("gpt")
    gpt_total = vocab * d + max_len * d + layers * block + 2 * d  # wte (tied LM head), wpe, blocks, ln_f
    assert count_parameters(gpt) == (gpt_total, gpt_total)
    apply_lora(gpt, lora_config())
    assert count_parameters(gpt) == (layers * adapters_per_block, gpt_total + layers * adapters_per_block)

    bert = SequenceClassifier(make_model("bert"), NUM_LABELS)
    bert_total = ((vocab + max_len + 2) * d + 2 * d  # embeddings + their LayerNorm
                  + layers * block
                  + d * d + d                        # pooler (the pre-training heads belong to objectives)
                  + d * NUM_LABELS + NUM_LABELS)     # classifier head
    apply_lora(bert, lora_config(), trainable=("head.",))
    trainable = layers * adapters_per_block + d * NUM_LABELS + NUM_LABELS
    assert count_parameters(bert) == (trainable, bert_total + layers * adapters_per_block)
    line = describe_trainable(bert)
    assert line.startswith(f"LoRA: {trainable:,} trainable of {bert_total + layers * adapters_per_block:,}")
    assert line.endswith("%)")


def test_tied_parameters_are_counted_once():
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    assert count_parameters(nn.Sequential(a, b)) == (16, 16)


def test_targets_match_on_dot_boundaries(make_model):
    model = apply_lora(make_model("bert"), lora_config(targets=["qkv"]))
    assert sum(isinstance(m, LoraLinear) for m in model.modules()) == 2
    with pytest.raises(PretrainerError) as err:
        apply_lora(make_model("bert"), lora_config(targets=["kv"]))  # not a whole name part
    assert "finetune.lora.targets" in str(err.value)


def test_bad_target_names_the_config_key(make_model):
    model = make_model("bert")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PretrainerError) as err:
        apply_lora(model, lora_config(targets=["attn.query"]))
    message = str(err.value)
    assert "finetune.lora.targets" in message and "attn.qkv" in message and "\n" not in message
    # nothing was frozen or replaced on the way to the error
    assert all(p.requires_grad for p in model.parameters())
    assert model.state_dict().keys() == before.keys()


def test_state_dict_round_trip_between_adapted_models(make_model):
    trained = apply_lora(make_classifier(make_model, "bert"), lora_config(), trainable=("head.",))
    train_a_few_steps(trained)
    fresh = apply_lora(make_classifier(make_model, "bert"), lora_config(), trainable=("head.",))
    fresh.load_state_dict(trained.state_dict())
    batch = random_batch(seed=5)
    assert torch.equal(fresh(batch), trained(batch))
