"""Hugging Face T5 (`T5ForConditionalGeneration`, `T5Model`) layout: config.json and weight names.

Our T5 (models/t5.py) differs only by fusing matrices: a self-attention's q, k, v are one `qkv`,
a cross-attention's k, v one `kv`, and a gated feed-forward's wi_0, wi_1 one `fc`. T5 keeps
the relative position bias in the first block's attention; ours keeps it on the stack.
Hugging Face names carry no model prefix (`shared`, `encoder.*`, `decoder.*`, `lm_head`).

Tying: transformers (5.x) ties the LM head to `shared` when the checkpoint has no lm_head.weight,
and scales the decoder output by d_model ** -0.5 when config.json's scale_decoder_outputs (older
versions: tie_word_embeddings) is true. So a tied run exports without lm_head.weight and with
both true; an untied one with its lm_head.weight and both false.
"""

from __future__ import annotations

import re

import torch

from pretrainer.errors import PretrainerError
from pretrainer.interop.hf_layout import HFFamily, _get, _refuse
from pretrainer.models.t5 import T5Config

# feed_forward_proj -> (gated, activation), and back
FEED_FORWARD_FROM_HF = {"relu": (False, "relu"), "gated-relu": (True, "relu"), "gated-gelu": (True, "gelu_tanh"),
                        "gated-gelu_new": (True, "gelu_tanh"), "gelu_new": (False, "gelu_tanh"),
                        "gelu_pytorch_tanh": (False, "gelu_tanh"), "gated-gelu_pytorch_tanh": (True, "gelu_tanh")}
FEED_FORWARD_TO_HF = {(False, "relu"): "relu", (True, "relu"): "gated-relu", (True, "gelu_tanh"): "gated-gelu",
                      (False, "gelu_tanh"): "gelu_new"}


def t5_config_from_hf(hf: dict, where: str) -> tuple[T5Config, list[str]]:
    _refuse(not hf.get("is_encoder_decoder", True), where, "a T5 without its decoder (is_encoder_decoder = false)")
    projection = hf.get("feed_forward_proj", "relu")
    if projection not in FEED_FORWARD_FROM_HF:
        raise PretrainerError(f"{where}: feed_forward_proj = {projection!r} is not supported; supported: "
                              f"{', '.join(FEED_FORWARD_FROM_HF)}")
    gated, activation = FEED_FORWARD_FROM_HF[projection]
    d_model, n_heads = _get(hf, "d_model", where), _get(hf, "num_heads", where)
    n_layers = _get(hf, "num_layers", where)
    cfg = T5Config(
        vocab_size=_get(hf, "vocab_size", where), n_layers=n_layers,
        n_decoder_layers=hf.get("num_decoder_layers") or n_layers, d_model=d_model, n_heads=n_heads,
        d_kv=_get(hf, "d_kv", where, 64), d_ff=_get(hf, "d_ff", where, 2048), gated=gated, activation=activation,
        max_len=_get(hf, "n_positions", where, 512),
        relative_buckets=_get(hf, "relative_attention_num_buckets", where, 32),
        relative_max_distance=_get(hf, "relative_attention_max_distance", where, 128),
        dropout=_get(hf, "dropout_rate", where, 0.1, float),
        layer_norm_eps=_get(hf, "layer_norm_epsilon", where, 1e-6, float),
        init_factor=_get(hf, "initializer_factor", where, 1.0, float),
        tie_embeddings=decoder_output_scaled(hf))
    return cfg, []


def decoder_output_scaled(hf: dict) -> bool:
    """Whether the checkpoint's LM head is T5's tied, scaled one (our tie_embeddings). transformers
    5 writes scale_decoder_outputs (and always tie_word_embeddings = true); older versions only
    tie_word_embeddings, false for T5 v1.1's untied, unscaled head."""
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def t5_config_to_hf(cfg: T5Config) -> dict:
    return {"model_type": "t5", "is_encoder_decoder": True, "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
            "d_kv": cfg.head_dim, "d_ff": cfg.d_ff or 4 * cfg.d_model, "num_layers": cfg.n_layers,
            "num_decoder_layers": cfg.decoder_layers, "num_heads": cfg.n_heads,
            "relative_attention_num_buckets": cfg.relative_buckets,
            "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": cfg.dropout,
            "layer_norm_epsilon": cfg.layer_norm_eps, "initializer_factor": cfg.init_factor,
            "feed_forward_proj": FEED_FORWARD_TO_HF[(cfg.gated, cfg.activation)], "n_positions": cfg.max_len,
            "tie_word_embeddings": cfg.tie_embeddings, "scale_decoder_outputs": cfg.tie_embeddings}


_BLOCK = re.compile(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)")


def t5hf_names(key: str, cfg: T5Config) -> list[str]:
    """Our key -> its Hugging Face name(s), in the order our fused matrix stacks them."""
    m = _BLOCK.fullmatch(key)
    if m is None:
        stack = key.split(".")[0]
        if key.endswith("relative_bias.weight"):
            return [f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        if key.endswith("ln_f.weight"):
            return [f"{stack}.final_layer_norm.weight"]
        if key in ("shared.weight", "lm_head.weight"):
            return [key]
        raise PretrainerError(f"T5 weight {key!r} has no Hugging Face name")
    stack, i, rest = m.groups()
    block = f"{stack}.block.{i}.layer."
    ff = 2 if stack == "decoder" else 1  # the decoder's cross-attention is layer 1
    table = {
        "ln_1.weight": [f"{block}0.layer_norm.weight"],
        "attn.qkv.weight": [f"{block}0.SelfAttention.{p}.weight" for p in "qkv"],
        "attn.proj.weight": [f"{block}0.SelfAttention.o.weight"],
        "ln_cross.weight": [f"{block}1.layer_norm.weight"],
        "cross.q.weight": [f"{block}1.EncDecAttention.q.weight"],
        "cross.kv.weight": [f"{block}1.EncDecAttention.{p}.weight" for p in "kv"],
        "cross.proj.weight": [f"{block}1.EncDecAttention.o.weight"],
        "ln_2.weight": [f"{block}{ff}.layer_norm.weight"],
        "mlp.fc.weight": ([f"{block}{ff}.DenseReluDense.wi_{j}.weight" for j in (0, 1)] if cfg.gated
                          else [f"{block}{ff}.DenseReluDense.wi.weight"]),
        "mlp.proj.weight": [f"{block}{ff}.DenseReluDense.wo.weight"],
    }
    if rest not in table:
        raise PretrainerError(f"T5 weight {key!r} has no Hugging Face name")
    return table[rest]


def t5_canonical(state: dict[str, torch.Tensor], cfg: T5Config) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop the copies of `shared` (encoder/decoder.embed_tokens) and the cross-attention bias
    table T5 never reads; a tied checkpoint's lm_head is `shared` itself, and an untied config
    whose checkpoint lacks lm_head.weight gets `shared` (what transformers ties it to)."""
    out, notes = {}, []
    for k, v in state.items():
        if k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            continue
        if re.fullmatch(r"decoder\.block\.\d+\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight", k):
            continue
        out[k] = v
    if "shared.weight" not in out:  # older files keep the table only as encoder.embed_tokens
        table = state.get("encoder.embed_tokens.weight", state.get("decoder.embed_tokens.weight"))
        if table is not None:
            out["shared.weight"] = table
    lm_head = out.get("lm_head.weight")
    if cfg.tie_embeddings and lm_head is not None:
        out.pop("lm_head.weight")
        if not torch.equal(lm_head, out.get("shared.weight", lm_head)):
            notes.append("dropped lm_head.weight, which differs from shared although config.json ties them")
    elif not cfg.tie_embeddings and lm_head is None and "shared.weight" in out:
        out["lm_head.weight"] = out["shared.weight"].clone()
        notes.append("lm_head.weight is not in the checkpoint: the untied LM head starts as a copy of shared "
                     "(as transformers ties it), without the d_model ** -0.5 scale")
    return out, notes


def t5_part(hf_name: str) -> str:
    if hf_name.startswith(("shared.", "encoder.", "decoder.")):
        return "base"
    return "lm_head" if hf_name.startswith("lm_head.") else "other"


T5 = HFFamily(
    model_type="t5", our_name="t5", base_prefix="", base_architecture="T5Model",
    config_from_hf=t5_config_from_hf, config_to_hf=t5_config_to_hf, hf_names=t5hf_names,
    canonical=t5_canonical, part_of=t5_part, transposed=lambda name: False,
    architectures={"T5Model": frozenset({"base"}), "T5ForConditionalGeneration": frozenset({"base", "lm_head"})},
    # T5's classifiers (T5ForSequenceClassification) read the decoder's last token; ours pools the encoder.
    classifier_architecture=None, tagger_architecture=None,
    fresh_parts={"lm_head": "untied LM head: N(0, init_factor) weights"},
    trained_with_backbone=frozenset({"base", "lm_head"}))
