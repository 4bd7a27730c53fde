"""T5: an encoder–decoder Transformer with relative position bias, pre-RMSNorm and shared embeddings.

The backbone's `forward(input_ids, attention_mask)` is the encoder, so it transfers like any
encoder (`pooled` = the mean over real tokens); with `decoder_input_ids` it runs both stacks and
returns the decoder's hidden states, which `decoder_projection` maps onto the vocabulary.

The module tree maps onto Hugging Face `T5ForConditionalGeneration` (interop/hf_t5.py):
  shared                                   <- shared
  {encoder,decoder}.relative_bias          <- {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias
  {enc,dec}.blocks.i.ln_1, attn.qkv, attn.proj  <- block.i.layer.0.{layer_norm, SelfAttention.cat(q,k,v), .o}
  decoder.blocks.i.ln_cross, cross.q, cross.kv, cross.proj  <- block.i.layer.1.{layer_norm, EncDecAttention.q,
                                                               cat(k,v), o}
  blocks.i.ln_2, mlp.fc, mlp.proj           <- block.i.layer.-1.{layer_norm, DenseReluDense.wi (gated:
                                               cat(wi_0, wi_1)), DenseReluDense.wo}
  {encoder,decoder}.ln_f                    <- {encoder,decoder}.final_layer_norm
  lm_head (untied only)                     <- lm_head
No linear layer has a bias, and attention logits are not divided by sqrt(d): T5 folds that
scale into the query's initialisation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import ModelConfig, _field, dropout_rate, invalid, non_negative, positive
from pretrainer.models.layers import decay_groups, masked_mean
from pretrainer.models.seq2seq import beam_search, greedy_or_sample
from pretrainer.registry import MODELS

T5_ACTIVATIONS = ("relu", "gelu_tanh")


@dataclass
class T5Config(ModelConfig):
    name: str = _field("t5", "architecture from the model registry")
    vocab_size: int = _field(0, "vocabulary size (0 = the tokenizer's)", check=non_negative)
    n_layers: int = _field(4, "encoder blocks", check=positive)
    n_decoder_layers: int = _field(0, "decoder blocks (0 = n_layers)", check=non_negative)
    d_model: int = _field(256, "hidden size", check=positive)
    n_heads: int = _field(4, "attention heads", check=positive)
    d_kv: int = _field(0, "width of each head (0 = d_model / n_heads)", check=non_negative)
    d_ff: int = _field(0, "feed-forward hidden size (0 = 4 * d_model)", check=non_negative)
    gated: bool = _field(False, "gated feed-forward (T5 v1.1: act(x W0) * (x W1)) instead of act(x W)")
    activation: str = _field("relu", "feed-forward activation (relu: T5; gelu_tanh with gated: T5 v1.1)",
                             T5_ACTIVATIONS)
    max_len: int = _field(512, "longest input or target sequence (relative positions need no table; this "
                                 "bounds memory, finetune.max_len and generation)", check=positive)
    relative_buckets: int = _field(32, "relative-position buckets (half exact offsets, half log-spaced)",
                                   check=positive)
    relative_max_distance: int = _field(128, "offsets at or beyond this share the last bucket", check=positive)
    dropout: float = _field(0.1, "dropout on embeddings, sublayer outputs, attention probabilities and the "
                                 "feed-forward hidden layer", check=dropout_rate)
    layer_norm_eps: float = _field(1e-6, "RMSNorm epsilon", check=positive)
    init_factor: float = _field(1.0, "scale of T5's initialisation (1.0 = T5's)", check=positive)
    tie_embeddings: bool = _field(True, "the LM head is the shared embedding (decoder output scaled by "
                                        "d_model ** -0.5 first, as in T5)")

    def check(self) -> None:
        if not self.d_kv and self.d_model % self.n_heads:
            invalid("n_heads", f"= {self.n_heads} must divide d_model = {self.d_model} when d_kv = 0 "
                               f"(or set d_kv, the width of each head)")
        if self.relative_buckets < 4 or self.relative_buckets % 2:
            invalid("relative_buckets", f"= {self.relative_buckets}: use an even number >= 4 (half the "
                                        f"buckets look left, half right, each half exact then log-spaced)")

    @classmethod
    def tiny(cls) -> T5Config:
        """2 + 2 layers, width 32, no dropout: the registry contract tests' size."""
        return cls(n_layers=2, d_model=32, n_heads=2, d_ff=64, max_len=64, relative_buckets=8,
                   relative_max_distance=16, dropout=0.0)

    @property
    def head_dim(self) -> int:
        return self.d_kv or self.d_model // self.n_heads

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Key position minus query position -> bucket in [0, num_buckets) (long tensor, same shape).

    Bidirectional: half the buckets for keys to the left, half (offset by num_buckets / 2) for
    keys to the right. Causal: keys to the right never attend, they all share bucket 0. In each
    half, the first half of the buckets are exact distances 0, 1, ...; the rest cover distances
    up to max_distance on a log scale, and anything farther falls in the last bucket.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # clamp(min=1) only keeps log() finite where the exact branch is taken anyway
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RMSNorm(nn.Module):
    """T5's LayerNorm: scale by the root mean square (in float32), no mean subtraction, no bias."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)


class T5Attention(nn.Module):
    """Self-attention (one `qkv` matmul) or cross-attention (`q` from the decoder, `kv` from the
    encoder output). The caller passes an additive float mask that already holds the relative
    position bias, the causal mask and padding."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int, dropout: float, cross: bool = False):
        super().__init__()
        self.n_heads, self.head_dim, self.attn_dropout, self.cross = n_heads, head_dim, dropout, cross
        inner = n_heads * head_dim
        if cross:
            self.q = nn.Linear(d_model, inner, bias=False)
            self.kv = nn.Linear(d_model, 2 * inner, bias=False)
        else:
            self.qkv = nn.Linear(d_model, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, d_model, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, memory: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C); memory (B, S, C) for cross-attention; bias broadcastable to (B, H, T, S)."""
        inner = self.n_heads * self.head_dim
        if self.cross:
            q = self.q(x)
            k, v = self.kv(memory).split(inner, dim=-1)
        else:
            q, k, v = self.qkv(x).split(inner, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        B, T = x.shape[:2]
        return self.proj(y.transpose(1, 2).reshape(B, T, inner))


class T5MLP(nn.Module):
    """act(x W) W_out, or gated act(x W0) * (x W1) W_out with W0 and W1 stacked in one `fc`."""

    def __init__(self, d_model: int, d_ff: int, activation: str, gated: bool, dropout: float):
        super().__init__()
        self.gated = gated
        self.fc = nn.Linear(d_model, 2 * d_ff if gated else d_ff, bias=False)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU(approximate="tanh")
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, linear = h.chunk(2, dim=-1)
            h = self.act(gate) * linear
        else:
            h = self.act(h)
        return self.proj(self.dropout(h))


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config, cross: bool):
        super().__init__()
        d, H, D = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.ln_1 = RMSNorm(d, cfg.layer_norm_eps)
        self.attn = T5Attention(d, H, D, cfg.dropout)
        if cross:
            self.ln_cross = RMSNorm(d, cfg.layer_norm_eps)
            self.cross = T5Attention(d, H, D, cfg.dropout, cross=True)
        self.ln_2 = RMSNorm(d, cfg.layer_norm_eps)
        self.mlp = T5MLP(d, cfg.d_ff or 4 * d, cfg.activation, cfg.gated, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, self_bias: torch.Tensor, memory: torch.Tensor | None = None,
                memory_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x), self_bias))
        if memory is not None:
            x = x + self.dropout(self.cross(self.ln_cross(x), memory_bias, memory))
        return x + self.dropout(self.mlp(self.ln_2(x)))


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (..., S), True = may attend -> float, 0 where kept and the dtype's minimum elsewhere
    (not -inf: a query that may see nothing then averages instead of giving NaN)."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


class T5Stack(nn.Module):
    """The encoder (bidirectional, no memory) or the decoder (causal, cross-attends to memory).
    The relative position bias is computed once per forward and shared by every block, as in T5."""

    def __init__(self, cfg: T5Config, n_layers: int, decoder: bool):
        super().__init__()
        self.decoder, self.cfg = decoder, cfg
        self.relative_bias = nn.Embedding(cfg.relative_buckets, cfg.n_heads)
        self.blocks = nn.ModuleList(T5Block(cfg, cross=decoder) for _ in range(n_layers))
        self.ln_f = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def position_bias(self, T: int, device: torch.device) -> torch.Tensor:
        """(1, H, T, T): the learned bias of each head for each (query, key) offset."""
        positions = torch.arange(T, device=device)
        relative = positions[None, :] - positions[:, None]  # key - query, (T, T)
        buckets = relative_position_bucket(relative, not self.decoder, self.cfg.relative_buckets,
                                           self.cfg.relative_max_distance)
        return self.relative_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) embedded tokens; mask (B, T) 1 = real; memory (B, S, C), memory_mask (B, S)."""
        T = x.shape[1]
        bias = self.position_bias(T, x.device).to(x.dtype)  # (1, H, T, T)
        keep = None
        if self.decoder:
            keep = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
        if mask is not None and not bool(mask.all()):
            keys = mask.bool()[:, None, None, :]  # (B, 1, 1, T)
            keep = keys if keep is None else keep & keys
        if keep is not None:
            bias = bias + additive_mask(keep, x.dtype)
        memory_bias = None
        if memory is not None and memory_mask is not None and not bool(memory_mask.all()):
            memory_bias = additive_mask(memory_mask.bool()[:, None, None, :], x.dtype)  # (B, 1, 1, S)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, bias, memory, memory_bias)
        return self.dropout(self.ln_f(x))


@MODELS.register("t5")
class T5Model(nn.Module):
    config_class = T5Config
    causal = False  # the encoder, which `forward` runs, sees the whole input
    is_encoder_decoder = True

    def __init__(self, config: T5Config):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("T5Config.vocab_size is 0: build the model with build_model(cfg, vocab_size)")
        if not config.d_kv and config.d_model % config.n_heads:
            raise ValueError(f"d_model = {config.d_model} is not a multiple of n_heads = {config.n_heads}")
        self.config = config
        self.d_model = config.d_model
        self.n_layers = max(config.n_layers, config.decoder_layers)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, config.n_layers, decoder=False)
        self.decoder = T5Stack(config, config.decoder_layers, decoder=True)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """T5's initialisation: every matrix N(0, factor / sqrt(fan-in)), the query's by an extra
        1 / sqrt(head_dim) (the attention scale, folded in), embeddings N(0, factor), norms 1."""
        cfg, f = self.config, self.config.init_factor
        inner = cfg.n_heads * cfg.head_dim
        nn.init.normal_(self.shared.weight, std=f)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=f)
        for stack in (self.encoder, self.decoder):
            nn.init.normal_(stack.relative_bias.weight, std=f * cfg.d_model ** -0.5)
            for block in stack.blocks:
                attentions = [block.attn] + ([block.cross] if hasattr(block, "cross") else [])
                for attn in attentions:
                    if attn.cross:
                        nn.init.normal_(attn.q.weight, std=f * (cfg.d_model * cfg.head_dim) ** -0.5)
                        nn.init.normal_(attn.kv.weight, std=f * cfg.d_model ** -0.5)
                    else:
                        nn.init.normal_(attn.qkv.weight, std=f * cfg.d_model ** -0.5)
                        with torch.no_grad():
                            attn.qkv.weight[:inner].mul_(cfg.head_dim ** -0.5)
                    nn.init.normal_(attn.proj.weight, std=f * inner ** -0.5)
                nn.init.normal_(block.mlp.fc.weight, std=f * cfg.d_model ** -0.5)
                nn.init.normal_(block.mlp.proj.weight, std=f * block.mlp.proj.in_features ** -0.5)

    def _check_length(self, ids: torch.Tensor, what: str) -> None:
        if ids.shape[1] > self.config.max_len:
            raise ValueError(f"{what} of {ids.shape[1]} tokens is longer than max_len = {self.config.max_len}")

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, S) -> encoder output (B, S, C)."""
        self._check_length(input_ids, "sequence")
        return self.encoder(self.shared(input_ids), attention_mask)

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
               decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """decoder_input_ids (B, T) (start token first), memory (B, S, C) -> decoder hidden (B, T, C)."""
        self._check_length(decoder_input_ids, "decoder sequence")
        return self.decoder(self.shared(decoder_input_ids), decoder_attention_mask, memory, memory_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's hidden states (B, S, C); with decoder_input_ids (B, T), the decoder's (B, T, C).
        token_type_ids are accepted and ignored (T5 has no segments)."""
        memory = self.encode(input_ids, attention_mask)
        if decoder_input_ids is None:
            return memory
        return self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)

    def decoder_projection(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """(features, weight, bias) with logits = features @ weight.T, for losses that project
        onto the vocabulary themselves. Tied: the shared embedding, after T5's d_model ** -0.5."""
        if self.lm_head is None:
            return hidden * self.d_model ** -0.5, self.shared.weight, None
        return hidden, self.lm_head.weight, None

    def decoder_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decoder hidden (..., C) -> (..., V)."""
        features, weight, _ = self.decoder_projection(hidden)
        return F.linear(features, weight)

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pooling: str = "mean") -> torch.Tensor:
        """(B, S, C) encoder output -> (B, C): the mean over real tokens. T5 has no [CLS] pooler,
        so "cls" means the mean too and fine-tuning configs written for BERT work unchanged."""
        if pooling in ("mean", "cls"):
            return masked_mean(hidden, attention_mask)
        raise ValueError(f"unknown pooling {pooling!r} for t5; choose mean")

    def freeze_decoder(self) -> None:
        """A classifier on the encoder never reads the decoder or the LM head: frozen, so every
        trainable parameter gets a gradient (DDP without find_unused_parameters)."""
        self.decoder.requires_grad_(False)
        if self.lm_head is not None:
            self.lm_head.requires_grad_(False)

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)

    def layer_id(self, param_name: str) -> int:
        """Depth for layer-wise LR decay: embeddings and position biases 0, block i of either stack
        i + 1, final norms and the LM head n_layers + 1."""
        if param_name.startswith(("shared.", "encoder.relative_bias.", "decoder.relative_bias.")):
            return 0
        m = re.match(r"(?:encoder|decoder)\.blocks\.(\d+)\.", param_name)
        return int(m.group(1)) + 1 if m else self.n_layers + 1

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, start_id: int, eos_id: int | None = None,
                 pad_id: int | None = None, attention_mask: torch.Tensor | None = None, num_beams: int = 1,
                 length_penalty: float = 1.0, suppress_ids=(), **sampling) -> torch.Tensor:
        """Decoder outputs (B, 1 + n) starting with start_id, for inputs (B, S): greedy or sampled
        (num_beams = 1, see models/seq2seq.py) or beam search; rows that ended in eos_id are
        padded with pad_id (default eos_id); `suppress_ids` are never emitted."""
        if num_beams > 1:
            return beam_search(self, input_ids, max_new_tokens, start_id=start_id, eos_id=eos_id, pad_id=pad_id,
                               attention_mask=attention_mask, num_beams=num_beams, length_penalty=length_penalty,
                               suppress_ids=suppress_ids)
        return greedy_or_sample(self, input_ids, max_new_tokens, start_id=start_id, eos_id=eos_id, pad_id=pad_id,
                                attention_mask=attention_mask, suppress_ids=suppress_ids, **sampling)
