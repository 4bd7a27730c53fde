"""BERT: a bidirectional Transformer encoder with its [CLS] pooler.

The pre-training heads (MLM, NSP) live with their objectives (objectives/heads.py), which
wrap this backbone as `PretrainingModel`; the names below are the wrapper's, with
`backbone.` dropped. The module tree mirrors Hugging Face `BertForPreTraining` so its
checkpoints map 1:1:
  embeddings.{word,position,token_type}_embeddings, embeddings.ln   <- bert.embeddings.*
  blocks.i.attn.qkv = cat(query, key, value)                        <- bert.encoder.layer.i.attention.self.*
  blocks.i.attn.proj, blocks.i.ln_1                                 <- attention.output.{dense,LayerNorm}
  blocks.i.mlp.fc, blocks.i.mlp.proj, blocks.i.ln_2                 <- intermediate.dense, output.{dense,LayerNorm}
  pooler                                                            <- bert.pooler.dense
  mlm_head.dense, mlm_head.ln, mlm_head.bias  (objective's)          <- cls.predictions.{transform.dense,
                                                                       transform.LayerNorm, bias}
  nsp_head  (objective's)                                           <- cls.seq_relationship
The MLM decoder matrix is the word embedding itself (cls.predictions.decoder.weight is tied).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from pretrainer.config import ModelConfig, _field, dropout_rate, invalid, non_negative, positive
from pretrainer.models.layers import ACTIVATIONS, Block, decay_groups, init_weights, masked_mean, padding_mask
from pretrainer.registry import MODELS


@dataclass
class BertConfig(ModelConfig):
    name: str = _field("bert", "architecture from the model registry")
    vocab_size: int = _field(0, "vocabulary size (0 = the tokenizer's)", check=non_negative)
    n_layers: int = _field(4, "Transformer blocks", check=positive)
    d_model: int = _field(256, "hidden size", check=positive)
    n_heads: int = _field(4, "attention heads (must divide d_model)", check=positive)
    d_ff: int = _field(0, "MLP hidden size (0 = 4 * d_model)", check=non_negative)
    max_len: int = _field(512, "longest sequence (learned position embeddings)", check=positive)
    type_vocab_size: int = _field(2, "token type (segment) ids", check=positive)
    dropout: float = _field(0.1, "dropout on embeddings and sublayer outputs", check=dropout_rate)
    attn_dropout: float = _field(0.1, "dropout on attention probabilities", check=dropout_rate)
    activation: str = _field("gelu", "MLP activation (gelu = exact erf)", ACTIVATIONS)
    norm_first: bool = _field(False, "pre-LN blocks instead of BERT's post-LN")
    layer_norm_eps: float = _field(1e-12, "LayerNorm epsilon", check=positive)
    init_std: float = _field(0.02, "std of the normal weight initialisation", check=positive)
    pruned_heads: list[list[int]] = _field([], "set by `pretrainer prune`: per layer, the attention heads removed "
                                               "(indices among the layer's n_heads, as Hugging Face's "
                                               "pruned_heads); empty = none")
    ffn_sizes: list[int] = _field([], "set by `pretrainer prune`: per-layer MLP width where the layers differ "
                                      "(empty = d_ff in every layer)", check=positive)

    def check(self) -> None:
        if self.d_model % self.n_heads:
            invalid("n_heads", f"= {self.n_heads} must divide d_model = {self.d_model} (each head gets "
                               f"d_model / n_heads dimensions)")
        for key in ("pruned_heads", "ffn_sizes"):
            if getattr(self, key) and len(getattr(self, key)) != self.n_layers:
                invalid(key, f"has {len(getattr(self, key))} entries: list one per layer (n_layers = "
                             f"{self.n_layers}) or none")
        for i, heads in enumerate(self.pruned_heads):
            if any(not 0 <= h < self.n_heads for h in heads) or len(set(heads)) >= self.n_heads:
                invalid(f"pruned_heads[{i}]", f"= {heads}: remove distinct heads among 0..{self.n_heads - 1}, "
                                              f"keeping at least one")

    @classmethod
    def tiny(cls) -> BertConfig:
        """2 layers, width 32, no dropout: the registry contract tests' size."""
        return cls(n_layers=2, d_model=32, n_heads=2, max_len=64, dropout=0.0, attn_dropout=0.0)

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(attention heads kept, MLP width) of each block, after any pruning."""
        d_ff = self.d_ff or 4 * self.d_model
        pruned = self.pruned_heads or [[] for _ in range(self.n_layers)]
        widths = self.ffn_sizes or [d_ff] * self.n_layers
        if len(pruned) != self.n_layers or len(widths) != self.n_layers:
            raise ValueError(f"pruned_heads ({len(pruned)} entries) and ffn_sizes ({len(widths)}) must list "
                             f"one entry per layer (n_layers = {self.n_layers}) or be empty")
        for i, (heads, width) in enumerate(zip(pruned, widths)):
            if len(set(heads)) != len(heads) or not all(0 <= h < self.n_heads for h in heads) \
                    or len(heads) >= self.n_heads:
                raise ValueError(f"pruned_heads[{i}] = {heads}: distinct head indices below n_heads = "
                                 f"{self.n_heads}, at least one head left")
            if width < 1:
                raise ValueError(f"ffn_sizes[{i}] = {width}: a layer keeps at least one MLP neuron")
        return [(self.n_heads - len(heads), width) for heads, width in zip(pruned, widths)]


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position_embeddings = nn.Embedding(cfg.max_len, cfg.d_model)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Word vectors come from input_ids (B, T) or are given as inputs_embeds (B, T, C)."""
        words = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        T = words.shape[1]
        x = words + self.position_embeddings.weight[:T]  # (B, T, C)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]  # all segment 0, without a (B, T) lookup
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.ln(x))


@MODELS.register("bert")
class BertModel(nn.Module):
    config_class = BertConfig
    causal = False  # every position sees the whole sequence

    def __init__(self, config: BertConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("BertConfig.vocab_size is 0: build the model with build_model(cfg, vocab_size)")
        self.config = config
        self.d_model = config.d_model
        self.n_layers = config.n_layers
        if config.d_model % config.n_heads:
            raise ValueError(f"d_model = {config.d_model} is not a multiple of n_heads = {config.n_heads}")
        self.embeddings = BertEmbeddings(config)
        self.blocks = nn.ModuleList(
            Block(config.d_model, n_heads, d_ff, config.dropout, config.attn_dropout, config.activation,
                  config.norm_first, config.layer_norm_eps, head_dim=config.d_model // config.n_heads)
            for n_heads, d_ff in config.layer_shapes())
        # Pre-LN stacks need a final norm; post-LN blocks already end in one.
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else None
        self.pooler = nn.Linear(config.d_model, config.d_model)  # trained by NSP/SOP, or by a classifier
        init_weights(self, config.init_std)

    def forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T); attention_mask (B, T), True/1 = real token -> hidden (B, T, C).

        inputs_embeds (B, T, C) replaces the word-embedding lookup (input_ids is then None), so
        soft prompts can be spliced in; position and segment embeddings are added as usual.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        T = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        if T > self.config.max_len:
            raise ValueError(f"sequence of {T} tokens is longer than max_len = {self.config.max_len}")
        x = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        mask = padding_mask(attention_mask)  # (B, 1, 1, T) or None
        for block in self.blocks:
            x = block(x, mask)
        return x if self.ln_f is None else self.ln_f(x)

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pooling: str = "cls") -> torch.Tensor:
        """(B, T, C) -> (B, C): tanh(dense([CLS])) as in BERT, or the mean over real tokens."""
        if pooling == "cls":
            return torch.tanh(self.pooler(hidden[:, 0]))
        if pooling == "mean":
            return masked_mean(hidden, attention_mask)
        raise ValueError(f"unknown pooling {pooling!r} for bert; choose cls or mean")

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)

    def layer_id(self, param_name: str) -> int:
        """Depth for layer-wise LR decay: embeddings 0, block i -> i + 1, heads n_layers + 1."""
        if param_name.startswith("embeddings."):
            return 0
        m = re.match(r"blocks\.(\d+)\.", param_name)
        return int(m.group(1)) + 1 if m else self.n_layers + 1
