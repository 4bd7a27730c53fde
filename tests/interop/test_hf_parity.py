"""Hugging Face BERT / GPT-2 weights map 1:1 onto our modules and give the same outputs.

The mapping here is the minimal one written for this test; the real importer lives in
pretrainer.transfer. transformers is a test-only dependency.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pretrainer.models import build_model  # noqa: E402
from pretrainer.objectives.heads import nest_backbone_keys, pretraining_model  # noqa: E402

VOCAB = 61


def bert_state_from_hf(hf_state: dict, n_layers: int) -> dict:
    out = {}
    for ours, theirs in [("embeddings.word_embeddings", "bert.embeddings.word_embeddings"),
                         ("embeddings.position_embeddings", "bert.embeddings.position_embeddings"),
                         ("embeddings.token_type_embeddings", "bert.embeddings.token_type_embeddings")]:
        out[f"{ours}.weight"] = hf_state[f"{theirs}.weight"]
    for suffix in ("weight", "bias"):
        out[f"embeddings.ln.{suffix}"] = hf_state[f"bert.embeddings.LayerNorm.{suffix}"]
        out[f"pooler.{suffix}"] = hf_state[f"bert.pooler.dense.{suffix}"]
        out[f"mlm_head.dense.{suffix}"] = hf_state[f"cls.predictions.transform.dense.{suffix}"]
        out[f"mlm_head.ln.{suffix}"] = hf_state[f"cls.predictions.transform.LayerNorm.{suffix}"]
        out[f"nsp_head.{suffix}"] = hf_state[f"cls.seq_relationship.{suffix}"]
        for i in range(n_layers):
            h = f"bert.encoder.layer.{i}."
            out[f"blocks.{i}.attn.qkv.{suffix}"] = torch.cat(
                [hf_state[f"{h}attention.self.{n}.{suffix}"] for n in ("query", "key", "value")])
            out[f"blocks.{i}.attn.proj.{suffix}"] = hf_state[f"{h}attention.output.dense.{suffix}"]
            out[f"blocks.{i}.ln_1.{suffix}"] = hf_state[f"{h}attention.output.LayerNorm.{suffix}"]
            out[f"blocks.{i}.mlp.fc.{suffix}"] = hf_state[f"{h}intermediate.dense.{suffix}"]
            out[f"blocks.{i}.mlp.proj.{suffix}"] = hf_state[f"{h}output.dense.{suffix}"]
            out[f"blocks.{i}.ln_2.{suffix}"] = hf_state[f"{h}output.LayerNorm.{suffix}"]
    out["mlm_head.bias"] = hf_state["cls.predictions.bias"]
    return out


def gpt2_state_from_hf(hf_state: dict, n_layers: int) -> dict:
    out = {"wte.weight": hf_state["transformer.wte.weight"], "wpe.weight": hf_state["transformer.wpe.weight"]}
    for suffix in ("weight", "bias"):
        out[f"ln_f.{suffix}"] = hf_state[f"transformer.ln_f.{suffix}"]
        for i in range(n_layers):
            h = f"transformer.h.{i}."
            for ours, theirs in [("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.qkv", "attn.c_attn"),
                                 ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")]:
                w = hf_state[f"{h}{theirs}.{suffix}"]
                # GPT-2's Conv1D keeps weights as (in, out)
                out[f"blocks.{i}.{ours}.{suffix}"] = w.t() if suffix == "weight" and w.dim() == 2 else w
    return out


def test_bert_matches_hugging_face(tiny_config):
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=24,
                                     type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = transformers.BertForPreTraining(hf_cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a mix-up would show
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    heads = ["mlm_head", "nsp_head"]  # BertForPreTraining's, which belong to the objectives
    model = pretraining_model(build_model(tiny_config("bert", d_ff=64), VOCAB), heads)
    model.load_state_dict(nest_backbone_keys(bert_state_from_hf(hf.state_dict(), 2), heads), strict=True)

    x = torch.randint(4, VOCAB, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    types = torch.zeros_like(x)
    types[:, 6:] = 1
    with torch.no_grad():
        ref = hf(input_ids=x, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        hidden = model(x, mask.bool(), types)
        keep = mask.bool()
        torch.testing.assert_close(hidden[keep], ref.hidden_states[-1][keep], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.lm_logits(hidden)[keep], ref.prediction_logits[keep], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.nsp_head(model.pooled(hidden, keep, "cls")),
                                   ref.seq_relationship_logits, atol=1e-4, rtol=1e-4)


def test_gpt_matches_hugging_face_gpt2(tiny_config):
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=24,
                                     activation_function="gelu_new", layer_norm_epsilon=1e-5,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model = pretraining_model(build_model(tiny_config("gpt"), VOCAB), [])
    model.backbone.load_state_dict(gpt2_state_from_hf(hf.state_dict(), 2), strict=True)

    x = torch.randint(4, VOCAB, (2, 12))
    with torch.no_grad():
        ref = hf(input_ids=x).logits
        torch.testing.assert_close(model.lm_logits(model(x)), ref, atol=1e-4, rtol=1e-4)
