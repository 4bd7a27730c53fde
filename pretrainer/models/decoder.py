"""GPT: a causal pre-LN Transformer decoder with a language-model head.

The module tree mirrors Hugging Face `GPT2LMHeadModel` so its checkpoints map 1:1:
  wte, wpe, ln_f                                  <- transformer.{wte,wpe,ln_f}
  blocks.i.ln_1, blocks.i.ln_2                    <- transformer.h.i.{ln_1,ln_2}
  blocks.i.attn.qkv, blocks.i.attn.proj           <- transformer.h.i.attn.{c_attn,c_proj}
  blocks.i.mlp.fc, blocks.i.mlp.proj              <- transformer.h.i.mlp.{c_fc,c_proj}
GPT-2 stores these as Conv1D, i.e. weights of shape (in, out): transpose them on import.
With `tie_embeddings` the LM head is `wte` itself (no lm_head parameter).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import ModelConfig, _field, dropout_rate, invalid, non_negative, positive
from pretrainer.models.layers import ACTIVATIONS, Block, decay_groups, init_weights, masked_mean
from pretrainer.registry import MODELS


@dataclass
class GPTConfig(ModelConfig):
    name: str = _field("gpt", "architecture from the model registry")
    vocab_size: int = _field(0, "vocabulary size (0 = the tokenizer's)", check=non_negative)
    n_layers: int = _field(4, "Transformer blocks", check=positive)
    d_model: int = _field(256, "hidden size", check=positive)
    n_heads: int = _field(4, "attention heads (must divide d_model)", check=positive)
    d_ff: int = _field(0, "MLP hidden size (0 = 4 * d_model)", check=non_negative)
    max_len: int = _field(1024, "context length (learned position embeddings)", check=positive)
    dropout: float = _field(0.1, "dropout on embeddings, sublayer outputs and attention probabilities",
                            check=dropout_rate)
    activation: str = _field("gelu_tanh", "MLP activation (gelu_tanh = GPT-2's gelu_new)", ACTIVATIONS)
    layer_norm_eps: float = _field(1e-5, "LayerNorm epsilon", check=positive)
    init_std: float = _field(0.02, "std of the normal weight initialisation", check=positive)
    tie_embeddings: bool = _field(True, "the LM head reuses the token embedding matrix")

    def check(self) -> None:
        if self.d_model % self.n_heads:
            invalid("n_heads", f"= {self.n_heads} must divide d_model = {self.d_model} (each head gets "
                               f"d_model / n_heads dimensions)")

    @classmethod
    def tiny(cls) -> GPTConfig:
        """2 layers, width 32, no dropout: the registry contract tests' size."""
        return cls(n_layers=2, d_model=32, n_heads=2, max_len=64, dropout=0.0)


@MODELS.register("gpt")
class GPT(nn.Module):
    config_class = GPTConfig
    causal = True  # each position sees only those before it
    poolings = ("cls", "last", "mean")  # finetune.pooling values `pooled` computes

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("GPTConfig.vocab_size is 0: build the model with build_model(cfg, vocab_size)")
        self.config = config
        self.d_model = config.d_model
        self.n_layers = config.n_layers
        d_ff = config.d_ff or 4 * config.d_model
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, d_ff, config.dropout, config.dropout,
                  config.activation, True, config.layer_norm_eps)
            for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_weights(self, config.init_std)
        # GPT-2: each block adds two residual branches, so their output projections start
        # smaller to keep the residual stream's variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> hidden (B, T, C). token_type_ids are accepted and ignored."""
        B, T = input_ids.shape
        if T > self.config.max_len:
            raise ValueError(f"sequence of {T} tokens is longer than max_len = {self.config.max_len}")
        x = self.drop(self.wte(input_ids) + self.wpe.weight[:T])  # (B, T, C)
        if attention_mask is None or bool(attention_mask.all()):
            mask, is_causal = None, True  # no padding: the fast causal kernel
        else:
            # SDPA takes either is_causal or a mask, so fold both into one (B, 1, T, T) mask.
            # The diagonal stays open so a pad query never has zero keys (NaN); real positions
            # already see themselves, so their outputs are unaffected.
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            keys = attention_mask.bool()[:, None, None, :]
            mask = (causal & keys) | torch.eye(T, dtype=torch.bool, device=input_ids.device)
            is_causal = False
        for block in self.blocks:
            x = block(x, mask, is_causal)
        return self.ln_f(x)

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pooling: str = "last") -> torch.Tensor:
        """(B, T, C) -> (B, C): the last real token (the only one that saw the whole text) or the mean.

        "cls" means "last" here, so fine-tuning configs written for BERT work unchanged.
        """
        if pooling in ("last", "cls"):
            if attention_mask is None:
                return hidden[:, -1]
            T = hidden.shape[1]
            # index of the last True per row; works for left and right padding
            last = T - 1 - attention_mask.bool().flip(1).int().argmax(dim=1)  # (B,)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        if pooling == "mean":
            return masked_mean(hidden, attention_mask)
        raise ValueError(f"unknown pooling {pooling!r} for gpt; choose last (cls) or mean")

    def lm_projection(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(features, weight, bias) with logits = features @ weight.T (+ bias), for losses that
        project onto the vocabulary themselves (see objectives/linear_ce.py)."""
        if self.lm_head is None:
            return hidden, self.wte.weight, None
        return hidden, self.lm_head.weight, self.lm_head.bias

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., V)."""
        return F.linear(*self.lm_projection(hidden))

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)

    def layer_id(self, param_name: str) -> int:
        """Depth for layer-wise LR decay: embeddings 0, block i -> i + 1, ln_f/lm_head n_layers + 1."""
        if param_name.startswith(("wte.", "wpe.")):
            return 0
        m = re.match(r"blocks\.(\d+)\.", param_name)
        return int(m.group(1)) + 1 if m else self.n_layers + 1

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, greedy: bool = False, eos_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue input_ids (B, T) or (T,); returns the prompt plus up to max_new_tokens tokens.

        No KV cache: each step re-runs the (cropped) context, which is fine at this scale.
        Once a row emits eos_id it keeps emitting eos_id; generation stops when all rows have.
        """
        was_training = self.training
        self.eval()
        squeeze = input_ids.dim() == 1
        idx = input_ids[None] if squeeze else input_ids
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.max_len:]
            logits = self.lm_logits(self(context)[:, -1]).float()  # (B, V)
            if greedy:
                next_id = logits.argmax(dim=-1)
            else:
                probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
                # sample where the generator lives (a CPU generator can drive a GPU model)
                on = generator.device if generator is not None else probs.device
                next_id = torch.multinomial(probs.to(on), 1, generator=generator).squeeze(1).to(idx.device)
            if eos_id is not None:
                next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
                finished |= next_id == eos_id
            idx = torch.cat([idx, next_id[:, None]], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        self.train(was_training)
        return idx[0] if squeeze else idx


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits (B, V) outside the top-k and outside the nucleus of mass top_p to -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass;
        # the most likely token is always kept
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits
