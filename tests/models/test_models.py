"""The transfer surface every registered text Transformer backbone offers, checked the same way for
each (the bag of embeddings, which has no blocks or positions, has tests/models/test_boe.py; the
image models have tests/models/test_image_models.py; the registry contracts cover every model)."""

import dataclasses
import json
import math
import re

import pytest
import torch

from pretrainer.config import ModelConfig
from pretrainer.errors import PretrainerError
from pretrainer.models import SequenceClassifier, build_model, model_config_dict, model_from_config_dict
from pretrainer.objectives.heads import PretrainingModel, mlm_head_for
from pretrainer.registry import MODELS


NAMES = [name for name in MODELS.names() if "n_heads" in MODELS.get(name).config_class.__dataclass_fields__
         and getattr(MODELS.get(name), "modality", "text") == "text"]  # the ViT reads images: test_image_models.py
VOCAB = 61  # as in conftest.py: not max_len, so the word embedding is the only (V, C) matrix
B, T = 3, 10


def with_lm_head(backbone):
    """The backbone with a language-model head: a decoder's own, an encoder–decoder's (its decoder's
    output projection, applied here to the encoder's states) or an encoder's MLM head (the
    masked-LM objective's) tied to its word embeddings."""
    if getattr(backbone, "is_encoder_decoder", False):
        return EncoderDecoderHead(backbone)
    return PretrainingModel(backbone, {} if hasattr(backbone, "lm_projection") else {"mlm_head": mlm_head_for(backbone)})


class EncoderDecoderHead(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def lm_logits(self, hidden):
        return self.backbone.decoder_logits(hidden)


def parameter(model, pattern: str):
    """The one parameter whose name ends with `pattern` (a regex), wherever the model nests it."""
    return next(p for n, p in model.named_parameters() if re.search(pattern + "$", n))


def ids(b=B, t=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (b, t), generator=g)


@pytest.mark.parametrize("name", NAMES)
def test_shapes(name, make_model):
    model = make_model(name)
    x = ids()
    mask = torch.ones(B, T, dtype=torch.bool)
    hidden = model(x, mask, torch.zeros_like(x))
    assert hidden.shape == (B, T, model.d_model) == (B, T, 32)
    lm = with_lm_head(model)
    assert lm.lm_logits(hidden).shape == (B, T, VOCAB)
    assert lm.lm_logits(hidden[mask][:7]).shape == (7, VOCAB)  # gathered positions (N, C)
    for pooling in ("cls", "mean"):
        assert model.pooled(hidden, mask, pooling).shape == (B, 32)
    assert model.config.vocab_size == VOCAB and model.config.name == name


@pytest.mark.parametrize("name", NAMES)
def test_too_long_input_is_refused(name, make_model):
    model = make_model(name)
    with pytest.raises(ValueError, match="max_len"):
        model(ids(t=model.config.max_len + 1))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_is_masked(name, side, make_model):
    model = make_model(name)
    x = ids()
    mask = torch.ones(B, T, dtype=torch.bool)
    pad = slice(T - 3, T) if side == "right" else slice(0, 3)
    mask[:, pad] = False
    y = x.clone()
    y[:, pad] = torch.randint(4, VOCAB, (B, 3))  # different tokens where the mask says "pad"
    hx, hy = model(x, mask), model(y, mask)
    assert torch.isfinite(hx).all() and torch.isfinite(hy).all()
    torch.testing.assert_close(hx[mask], hy[mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(hx[~mask], hy[~mask])  # pad positions themselves did change
    # mean pooling ignores pads too
    torch.testing.assert_close(model.pooled(hx, mask, "mean"), model.pooled(hy, mask, "mean"), atol=1e-5, rtol=1e-5)


def test_gpt_is_causal(make_model):
    model = make_model("gpt")
    x = ids()
    y = x.clone()
    y[:, 6:] = torch.randint(4, VOCAB, (B, T - 6))
    lx, ly = model.lm_logits(model(x)), model.lm_logits(model(y))
    torch.testing.assert_close(lx[:, :6], ly[:, :6], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(lx[:, 6:], ly[:, 6:])
    # the masked path (no is_causal fast path) is causal too
    mask = torch.ones(B, T, dtype=torch.bool)
    torch.testing.assert_close(model.lm_logits(model(x, mask)), lx, atol=1e-5, rtol=1e-5)


def test_bert_is_bidirectional(make_model):
    model = make_model("bert")
    x = ids()
    y = x.clone()
    y[:, -1] = (x[:, -1] + 1 - 4) % (VOCAB - 4) + 4
    assert not torch.allclose(model(x)[:, 0], model(y)[:, 0])


def test_gpt_last_pooling_finds_the_last_real_token(make_model):
    model = make_model("gpt")
    hidden = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    pooled = model.pooled(hidden, mask, "cls")
    torch.testing.assert_close(pooled, torch.stack([hidden[0, 2], hidden[1, 4]]))
    torch.testing.assert_close(model.pooled(hidden, None, "last"), hidden[:, -1])


@pytest.mark.parametrize("name", NAMES)
def test_lm_head_is_tied_to_the_embedding(name, make_model):
    model = with_lm_head(make_model(name))
    big = [n for n, p in model.named_parameters() if p.shape == (VOCAB, 32)]
    assert len(big) == 1, big  # one matrix serves as input embedding and output projection
    assert len([k for k, v in model.state_dict().items() if v.shape == (VOCAB, 32)]) == 1
    (emb,) = [p for p in model.parameters() if p.shape == (VOCAB, 32)]
    model.lm_logits(torch.randn(4, 32)).sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_gpt_untied_head(make_model):
    model = make_model("gpt", tie_embeddings=False)
    assert model.lm_head is not None and model.lm_head.weight is not model.wte.weight
    assert model.lm_logits(torch.randn(2, 32)).shape == (2, VOCAB)


def _check_groups(model, groups, wd=0.1):
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert set(seen) == {id(p) for p in model.parameters() if p.requires_grad}
    decay, no_decay = groups
    assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for n, p in model.named_parameters():
        if not p.requires_grad:  # frozen (an encoder–decoder's decoder under a classifier): in no group
            continue
        if "ln" in n.split(".")[-2] or n.endswith("bias"):
            assert id(p) in no_decay_ids, n
        if p.dim() == 2:
            assert id(p) not in no_decay_ids, n


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_cover_every_parameter_once(name, make_model):
    model = make_model(name)
    _check_groups(model, model.param_groups(0.1))
    clf = SequenceClassifier(model, 3)
    _check_groups(clf, clf.param_groups(0.1))
    torch.optim.AdamW(clf.param_groups(0.1))  # accepted as is


@pytest.mark.parametrize("name", NAMES)
def test_layer_ids(name, make_model):
    model = make_model(name)
    ids_ = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert set(ids_.values()) == {0, 1, 2, 3}
    first_qkv = next(n for n in ids_ if re.search(r"blocks\.0\.attn\.qkv\.weight$", n))
    second_fc = next(n for n in ids_ if re.search(r"blocks\.1\.mlp\.fc\.weight$", n))
    assert ids_[first_qkv] == 1 and ids_[second_fc] == 2
    emb = [n for n, p in model.named_parameters() if p.shape == (VOCAB, 32)][0]
    assert ids_[emb] == 0
    clf = SequenceClassifier(model, 2)
    assert clf.layer_id("head.weight") == 3 and clf.layer_id("backbone." + emb) == 0


@pytest.mark.parametrize("name", NAMES)
def test_initialisation(name, tiny_config):
    if "init_std" not in {f.name for f in dataclasses.fields(MODELS.get(name).config_class)}:
        pytest.skip("an initialisation of its own (T5's: tests/models/test_t5.py)")
    torch.manual_seed(0)
    model = build_model(tiny_config(name, d_model=64, n_heads=4, n_layers=2), 500)
    for n, p in model.named_parameters():
        if n.endswith("bias"):
            assert p.abs().max() == 0, n
        elif p.dim() == 1:  # LayerNorm weights
            assert (p == 1).all(), n
    std = model.blocks[0].attn.qkv.weight.std().item()
    assert abs(std - 0.02) < 0.002
    if name == "gpt":  # residual projections start at 0.02 / sqrt(2 * n_layers)
        assert abs(model.blocks[0].mlp.proj.weight.std().item() - 0.01) < 0.001


def test_build_model_fills_vocab_without_touching_the_config(tiny_config):
    cfg = tiny_config("bert", vocab_size=0)
    model = build_model(cfg, 77)
    assert cfg.vocab_size == 0 and model.config.vocab_size == 77
    assert build_model(tiny_config("bert", vocab_size=80), 77).config.vocab_size == 80
    with pytest.raises(PretrainerError, match="vocab_size"):
        build_model(tiny_config("bert", vocab_size=50), 77)
    # a bare ModelConfig (only a name) gets the architecture's defaults
    assert build_model(ModelConfig(name="gpt"), 77).config == dataclasses.replace(
        MODELS.get("gpt").config_class(), vocab_size=77)


@pytest.mark.parametrize("name", NAMES)
def test_config_dict_round_trip(name, make_model):
    model = make_model(name)
    spec = json.loads(json.dumps(model_config_dict(model)))
    assert spec["name"] == name
    again = model_from_config_dict(spec)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    clf = SequenceClassifier(model, 5, pooling="mean", dropout=0.2)
    clf2 = model_from_config_dict(json.loads(json.dumps(model_config_dict(clf))))
    assert isinstance(clf2, SequenceClassifier) and clf2.num_labels == 5 and clf2.pooling == "mean"
    clf2.load_state_dict(clf.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_sequence_classifier(name, make_model):
    model = make_model(name)
    clf = SequenceClassifier(model, 4, pooling="cls").eval()
    x = ids()
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x, dtype=torch.bool),
             "token_type_ids": torch.zeros_like(x)}
    assert clf(batch).shape == (B, 4)
    old = clf.head
    clf.reset_head(7)
    assert clf(batch).shape == (B, 7) and clf.head is not old and clf.num_labels == 7
    assert clf.config is model.config and clf.d_model == 32


@pytest.mark.parametrize("name", NAMES)
def test_dropout_only_in_training(name, tiny_config):
    model = build_model(tiny_config(name, dropout=0.5), VOCAB)
    x = ids()
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_backward_gives_finite_grads(name, make_model):
    model = make_model(name).train()
    with_lm_head(model).lm_logits(model(ids())).logsumexp(-1).mean().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), n
    assert parameter(model, r"blocks\.0\.attn\.qkv\.weight").grad.abs().sum() > 0


def test_pooling_name_is_checked(make_model):
    for name in NAMES:
        model = make_model(name)
        with pytest.raises(ValueError, match="pooling"):
            model.pooled(torch.zeros(1, 2, 32), None, "max")


def test_bert_pre_ln_variant(make_model):
    model = make_model("bert", norm_first=True)
    assert model.ln_f is not None and math.isfinite(model(ids()).sum().item())
