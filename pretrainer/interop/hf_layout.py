"""Hugging Face layout shared by import (hf.py) and export (hf_export.py).

Our modules mirror Hugging Face's (see the docstrings of encoder.py and decoder.py), so a
weight maps by renaming, plus two reshapes: BERT's query/key/value are one `qkv` matrix
here, and GPT-2's Conv1D weights are stored transposed. Internally every Hugging Face
name is in its "full" form (`bert.`/`transformer.` prefix, as in BertForPreTraining /
GPT2LMHeadModel); a base-model class (BertModel, GPT2Model) drops that prefix on disk.
"""

from __future__ import annotations

import re
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from pretrainer.config import ModelConfig
from pretrainer.errors import PretrainerError
from pretrainer.models.decoder import GPTConfig
from pretrainer.models.encoder import BertConfig

IMPORT_FORMAT = "pretrainer-hf-import/1"

# Hugging Face activation name -> ours, and back. gelu_pytorch_tanh is the same function as gelu_new.
ACTIVATIONS_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


# ---------------------------------------------------------------- config.json <-> our configs


def _get(hf: dict, key: str, where: str, default=None, kind: type = int):
    value = hf.get(key, default)
    if value is None:
        raise PretrainerError(f"{where}: missing {key!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise PretrainerError(f"{where}: {key!r} must be an integer, got {value!r}")
    if kind is float and not isinstance(value, (int, float)):
        raise PretrainerError(f"{where}: {key!r} must be a number, got {value!r}")
    return value


def _activation(name, where: str, key: str) -> str:
    if name not in ACTIVATIONS_FROM_HF:
        raise PretrainerError(f"{where}: {key} = {name!r} is not supported; supported: "
                              f"{', '.join(ACTIVATIONS_FROM_HF)}")
    return ACTIVATIONS_FROM_HF[name]


def _refuse(condition, where: str, what: str) -> None:
    if condition:
        raise PretrainerError(f"{where}: {what} is not supported by pretrainer's models")


def bert_config_from_hf(hf: dict, where: str) -> tuple[BertConfig, list[str]]:
    _refuse(hf.get("position_embedding_type", "absolute") != "absolute", where,
            f"position_embedding_type = {hf.get('position_embedding_type')!r} (only 'absolute')")
    _refuse(hf.get("is_decoder") or hf.get("add_cross_attention"), where, "a BERT decoder / cross-attention")
    d_model = _get(hf, "hidden_size", where)
    cfg = BertConfig(
        vocab_size=_get(hf, "vocab_size", where), n_layers=_get(hf, "num_hidden_layers", where),
        d_model=d_model, n_heads=_get(hf, "num_attention_heads", where),
        d_ff=_get(hf, "intermediate_size", where, 4 * d_model),
        max_len=_get(hf, "max_position_embeddings", where, 512),
        type_vocab_size=_get(hf, "type_vocab_size", where, 2),
        dropout=_get(hf, "hidden_dropout_prob", where, 0.1, float),
        attn_dropout=_get(hf, "attention_probs_dropout_prob", where, 0.1, float),
        activation=_activation(hf.get("hidden_act", "gelu"), where, "hidden_act"),
        layer_norm_eps=_get(hf, "layer_norm_eps", where, 1e-12, float),
        init_std=_get(hf, "initializer_range", where, 0.02, float))
    return cfg, []


def bert_config_to_hf(cfg: BertConfig) -> dict:
    if cfg.norm_first:
        raise PretrainerError("a pre-LN BERT (model.norm_first = true) has no Hugging Face BERT equivalent; "
                              "only post-LN BERT runs can be exported")
    return {"model_type": "bert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            # A pruned encoder with uneven MLP widths exports at its widest (hf_export.dense_state).
            "intermediate_size": max(cfg.ffn_sizes or [cfg.d_ff or 4 * cfg.d_model]),
            "hidden_act": ACTIVATIONS_TO_HF[cfg.activation],
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
            "max_position_embeddings": cfg.max_len, "type_vocab_size": cfg.type_vocab_size,
            "initializer_range": cfg.init_std, "layer_norm_eps": cfg.layer_norm_eps,
            "position_embedding_type": "absolute", "tie_word_embeddings": True}


def gpt2_config_from_hf(hf: dict, where: str) -> tuple[GPTConfig, list[str]]:
    _refuse(hf.get("add_cross_attention"), where, "GPT-2 cross-attention")
    _refuse(not hf.get("scale_attn_weights", True), where, "scale_attn_weights = false")
    _refuse(hf.get("scale_attn_by_inverse_layer_idx"), where, "scale_attn_by_inverse_layer_idx = true")
    d_model = _get(hf, "n_embd", where)
    dropout = _get(hf, "resid_pdrop", where, 0.1, float)
    notes = []
    others = {k: hf[k] for k in ("embd_pdrop", "attn_pdrop") if k in hf and hf[k] != dropout}
    if others:
        notes.append(f"one dropout rate for everything: resid_pdrop = {dropout} (config also has {others})")
    cfg = GPTConfig(
        vocab_size=_get(hf, "vocab_size", where), n_layers=_get(hf, "n_layer", where), d_model=d_model,
        n_heads=_get(hf, "n_head", where), d_ff=hf.get("n_inner") or 0,
        max_len=_get(hf, "n_positions", where, hf.get("n_ctx", 1024)), dropout=dropout,
        activation=_activation(hf.get("activation_function", "gelu_new"), where, "activation_function"),
        layer_norm_eps=_get(hf, "layer_norm_epsilon", where, 1e-5, float),
        init_std=_get(hf, "initializer_range", where, 0.02, float),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
    return cfg, notes


def gpt2_config_to_hf(cfg: GPTConfig) -> dict:
    return {"model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads, "n_inner": cfg.d_ff or None, "n_positions": cfg.max_len,
            "activation_function": ACTIVATIONS_TO_HF[cfg.activation], "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
            "initializer_range": cfg.init_std, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "tie_word_embeddings": cfg.tie_embeddings}


# ---------------------------------------------------------------- weight names


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    for ours, theirs in table:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return None


BERT_NAMES = [  # our prefix -> full Hugging Face prefix (BertForPreTraining)
    ("embeddings.ln.", "bert.embeddings.LayerNorm."),
    ("embeddings.", "bert.embeddings."),
    ("pooler.", "bert.pooler.dense."),
    ("mlm_head.dense.", "cls.predictions.transform.dense."),
    ("mlm_head.ln.", "cls.predictions.transform.LayerNorm."),
    ("mlm_head.bias", "cls.predictions.bias"),
    ("nsp_head.", "cls.seq_relationship."),
]
BERT_BLOCK_NAMES = [  # inside blocks.i -> inside bert.encoder.layer.i
    ("attn.proj.", "attention.output.dense."),
    ("ln_1.", "attention.output.LayerNorm."),
    ("mlp.fc.", "intermediate.dense."),
    ("mlp.proj.", "output.dense."),
    ("ln_2.", "output.LayerNorm."),
]


def berthf_names(key: str, cfg: BertConfig | None = None) -> list[str]:
    """Our backbone key -> its Hugging Face name(s); `qkv` is three (query, key, value)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m is None:
        name = _rename(key, BERT_NAMES)
    elif m.group(2).startswith("attn.qkv."):
        suffix = m.group(2)[len("attn.qkv."):]
        return [f"bert.encoder.layer.{m.group(1)}.attention.self.{p}.{suffix}" for p in ("query", "key", "value")]
    else:
        inner = _rename(m.group(2), BERT_BLOCK_NAMES)
        name = None if inner is None else f"bert.encoder.layer.{m.group(1)}.{inner}"
    if name is None:
        raise PretrainerError(f"BERT weight {key!r} has no Hugging Face name (only post-LN BERT maps)")
    return [name]


GPT2_BLOCK_NAMES = [("attn.qkv.", "attn.c_attn."), ("attn.proj.", "attn.c_proj."),
                    ("mlp.fc.", "mlp.c_fc."), ("mlp.proj.", "mlp.c_proj."), ("ln_", "ln_")]


def gpt2hf_names(key: str, cfg: GPTConfig | None = None) -> list[str]:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m is None:
        name = "lm_head.weight" if key == "lm_head.weight" else "transformer." + key
    else:
        name = f"transformer.h.{m.group(1)}.{_rename(m.group(2), GPT2_BLOCK_NAMES)}"
    return [name]


def gpt2_transposed(hf_name: str) -> bool:
    """GPT-2's Conv1D layers keep their weight as (in, out); nn.Linear is (out, in)."""
    return bool(re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", hf_name))


def bert_part(hf_name: str) -> str:
    for prefix, part in (("bert.pooler.", "pooler"), ("bert.", "base"), ("cls.predictions.", "mlm"),
                         ("cls.seq_relationship.", "nsp"), ("classifier.", "classifier")):
        if hf_name.startswith(prefix):
            return part
    return "other"


def gpt2_part(hf_name: str) -> str:
    for prefix, part in (("transformer.", "base"), ("lm_head.", "lm_head"), ("classifier.", "classifier"),
                         ("score.", "classifier")):
        if hf_name.startswith(prefix):
            return part
    return "other"


def bert_canonical(state: dict[str, torch.Tensor], cfg: BertConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Full BertForPreTraining names: add the `bert.` prefix, old TF-style gamma/beta, decoder bias."""
    out, notes = {}, []
    prefixed = any(k.startswith("bert.") for k in state)
    for k, v in state.items():
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k))
        if not prefixed and k.startswith(("embeddings.", "encoder.", "pooler.")):
            k = "bert." + k
        out[k] = v
    decoder_bias = out.pop("cls.predictions.decoder.bias", None)
    if decoder_bias is not None and "cls.predictions.bias" not in out:
        out["cls.predictions.bias"] = decoder_bias
    decoder = out.pop("cls.predictions.decoder.weight", None)
    embedding = out.get("bert.embeddings.word_embeddings.weight")
    if decoder is not None and embedding is not None and not torch.equal(decoder, embedding):
        notes.append("dropped cls.predictions.decoder.weight, which differs from the word embeddings: "
                     "our MLM head always projects with the word embeddings (tied)")
    return out, notes


def gpt2_canonical(state: dict[str, torch.Tensor], cfg: GPTConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Full GPT2LMHeadModel names; a tied lm_head.weight (older files store it) is the embedding."""
    prefixed = any(k.startswith("transformer.") for k in state)
    out, notes = {}, []
    for k, v in state.items():
        if re.search(r"\.attn\.(masked_)?bias$", k):  # causal-mask buffers of older checkpoints
            continue
        out[k if prefixed or k.startswith("lm_head.") else "transformer." + k] = v
    lm_head = out.pop("lm_head.weight", None) if cfg.tie_embeddings else None
    if lm_head is not None and not torch.equal(lm_head, out.get("transformer.wte.weight", lm_head)):
        notes.append("dropped lm_head.weight, which differs from wte although config.json ties them")
    return out, notes


@dataclass(frozen=True)
class HFFamily:
    """How one Hugging Face model_type maps onto one of our registered models."""

    model_type: str
    our_name: str
    base_prefix: str  # dropped on disk by the base-model class
    base_architecture: str
    config_from_hf: Callable[[dict, str], tuple[ModelConfig, list[str]]]
    config_to_hf: Callable[[ModelConfig], dict]
    hf_names: Callable[[str, ModelConfig], list[str]]  # our key (the config decides gated T5 FFNs) -> theirs
    canonical: Callable[[dict, ModelConfig], tuple[dict, list[str]]]
    part_of: Callable[[str], str]
    transposed: Callable[[str], bool]
    architectures: dict[str, frozenset]  # Hugging Face class -> the parts its checkpoint holds
    classifier_architecture: str | None  # for a SequenceClassifier
    tagger_architecture: str | None  # for a TokenClassifier
    fresh_parts: dict[str, str]  # parts that may be missing on import -> how they are initialised
    pretraining_heads: tuple[str, ...] = ()  # objectives/heads.py heads an imported backbone is wrapped with
    # What pre-training trains: the parts every such run trains, and those each head adds.
    trained_with_backbone: frozenset = frozenset({"base"})
    head_parts: dict[str, frozenset] = dataclasses.field(default_factory=dict)

    def trained_parts(self, head_names) -> frozenset:
        """The parts a pre-training run with these heads trained (a head with no Hugging Face
        counterpart, like the sentence-order head, adds none)."""
        return self.trained_with_backbone.union(*(self.head_parts.get(h, frozenset()) for h in head_names))

    def head_architecture(self, head: str) -> str | None:
        """The Hugging Face class for a "classifier" or a "tagger" of this family, if it has one."""
        return {"classifier": self.classifier_architecture, "tagger": self.tagger_architecture}[head]


BERT = HFFamily(
    model_type="bert", our_name="bert", base_prefix="bert.", base_architecture="BertModel",
    config_from_hf=bert_config_from_hf, config_to_hf=bert_config_to_hf, hf_names=berthf_names,
    canonical=bert_canonical, part_of=bert_part, transposed=lambda name: False,
    architectures={"BertModel": frozenset({"base", "pooler"}),
                   "BertForMaskedLM": frozenset({"base", "mlm"}),
                   "BertForPreTraining": frozenset({"base", "pooler", "mlm", "nsp"}),
                   "BertForSequenceClassification": frozenset({"base", "pooler", "classifier"}),
                   "BertForTokenClassification": frozenset({"base", "classifier"})},
    classifier_architecture="BertForSequenceClassification", tagger_architecture="BertForTokenClassification",
    fresh_parts={"mlm": "MLM head: transform dense N(0, init_std) and LayerNorm identity (fresh), "
                        "decoder tied to the word embeddings, bias zero",
                 "nsp": "NSP head: N(0, init_std) weights, zero bias",
                 "pooler": "pooler: N(0, init_std) weights, zero bias"},
    pretraining_heads=("mlm_head", "nsp_head"),
    head_parts={"mlm_head": frozenset({"mlm"}), "nsp_head": frozenset({"pooler", "nsp"})})

GPT2 = HFFamily(
    model_type="gpt2", our_name="gpt", base_prefix="transformer.", base_architecture="GPT2Model",
    config_from_hf=gpt2_config_from_hf, config_to_hf=gpt2_config_to_hf, hf_names=gpt2hf_names,
    canonical=gpt2_canonical, part_of=gpt2_part, transposed=gpt2_transposed,
    architectures={"GPT2Model": frozenset({"base"}), "GPT2LMHeadModel": frozenset({"base", "lm_head"}),
                   "GPT2ForTokenClassification": frozenset({"base", "classifier"})},
    # GPT2ForSequenceClassification scores the last token; our classifier pools, so it has no equivalent.
    classifier_architecture=None, tagger_architecture="GPT2ForTokenClassification",
    fresh_parts={"lm_head": "untied LM head: N(0, init_std) weights"},
    trained_with_backbone=frozenset({"base", "lm_head"}))
