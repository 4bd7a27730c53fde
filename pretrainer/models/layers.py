"""Transformer building blocks shared by the encoder (BERT) and the decoder (GPT).

Parameter names are chosen so Hugging Face checkpoints map onto them one to one:
the attention's `qkv` is BERT's query/key/value (or GPT-2's `c_attn`) concatenated along
the output dimension in that order, `proj` is the attention output, `mlp.fc` / `mlp.proj`
are the intermediate and output dense layers, `ln_1` / `ln_2` the two LayerNorms.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "gelu_tanh")


def activation_fn(name: str):
    # BERT uses the exact erf GELU; GPT-2's "gelu_new" is the tanh approximation.
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")


class SelfAttention(nn.Module):
    """`n_heads` heads of width `head_dim` (default d_model / n_heads). A pruned layer keeps fewer
    heads of the same width (compression/prune.py), so its q/k/v width H * head_dim < d_model."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float, head_dim: int | None = None):
        super().__init__()
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"d_model = {d_model} is not a multiple of n_heads = {n_heads}")
            head_dim = d_model // n_heads
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.attn_dropout = attn_dropout
        inner = n_heads * head_dim
        self.qkv = nn.Linear(d_model, 3 * inner)  # one matmul for q, k and v
        self.proj = nn.Linear(inner, d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        """x (B, T, C); attn_mask bool, broadcastable to (B, H, T, T), True = may attend."""
        B, T, _ = x.shape
        inner = self.n_heads * self.head_dim
        q, k, v = self.qkv(x).split(inner, dim=-1)
        # (B, T, H * D) -> (B, H, T, D)
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, inner)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str):
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff)
        self.act = activation_fn(activation)
        self.proj = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Attention + MLP with residuals; post-LN (BERT) or pre-LN (GPT) by `norm_first`."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, attn_dropout: float,
                 activation: str, norm_first: bool, layer_norm_eps: float, head_dim: int | None = None):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.attn = SelfAttention(d_model, n_heads, attn_dropout, head_dim)
        self.ln_2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.mlp = MLP(d_model, d_ff, activation)
        self.dropout = nn.Dropout(dropout)  # on each sublayer's output, before the residual add

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attn(self.ln_1(x), attn_mask, is_causal))
            x = x + self.dropout(self.mlp(self.ln_2(x)))
        else:
            x = self.ln_1(x + self.dropout(self.attn(x, attn_mask, is_causal)))
            x = self.ln_2(x + self.dropout(self.mlp(x)))
        return x


def init_weights(module: nn.Module, std: float, keep: nn.Module | None = None) -> None:
    """BERT/GPT-2 initialisation: N(0, std) for matrices and embeddings, LayerNorm = identity.

    Submodules of `keep` are left as they are (a head that shares the backbone's embeddings
    must not re-draw them)."""
    kept = set(keep.modules()) if keep is not None else set()
    for m in module.modules():
        if m in kept:
            continue
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices (linear weights and embeddings), not vectors (norms, biases).

    `named_parameters` yields a tied weight once, so every parameter lands in exactly one group.
    """
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def layer_decay_groups(module: nn.Module, weight_decay: float, decay: float) -> list[dict]:
    """`decay_groups` split by depth, each with `lr_scale = decay ** (top - depth)`.

    Layer-wise learning-rate decay (ELECTRA, BEiT): the head trains at the full rate and
    each layer below at `decay` times the rate of the one above, so fine-tuning moves the
    general lower layers least. Depth comes from `module.layer_id(name)`.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    depth = {n: module.layer_id(n) for n, _ in named}
    top = max(depth.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named:
        key = (depth[name], p.dim() >= 2)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": weight_decay if key[1] else 0.0,
                           "lr_scale": decay ** (top - key[0])}
        groups[key]["params"].append(p)
    # Highest first: the logged learning rate (group 0's) is then the head's, the peak.
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the non-pad positions: hidden (B, T, C), attention_mask (B, T) -> (B, C)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    w = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


def chunk_mean(vectors: torch.Tensor, owner: torch.Tensor, n_docs: int) -> torch.Tensor:
    """(N, C) chunk vectors, owner (N,) document index of each -> (D, C) per-document mean."""
    sums = vectors.new_zeros(n_docs, vectors.shape[-1]).index_add_(0, owner, vectors)
    counts = torch.bincount(owner, minlength=n_docs).clamp(min=1).to(vectors.dtype)
    return sums / counts.unsqueeze(-1)


def chunk_max(vectors: torch.Tensor, owner: torch.Tensor, n_docs: int) -> torch.Tensor:
    """(N, C), owner (N,) -> (D, C): each feature's largest value over a document's chunks."""
    out = vectors.new_zeros(n_docs, vectors.shape[-1])
    return out.scatter_reduce(0, owner.unsqueeze(-1).expand_as(vectors), vectors, "amax", include_self=False)


# finetune.chunk_pooling: how a long document's chunk vectors become one vector.
CHUNK_POOLINGS = {"mean": chunk_mean, "max": chunk_max}


def pool_chunks(vectors: torch.Tensor, owner: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """(N, C) vectors of chunk rows whose documents are `owner` (N,), numbered 0..D-1 in order
    -> (D, C). Every document has at least one chunk, so D is the last owner + 1."""
    if how not in CHUNK_POOLINGS:
        raise ValueError(f"unknown chunk pooling {how!r}; choose {', '.join(CHUNK_POOLINGS)}")
    return CHUNK_POOLINGS[how](vectors, owner, int(owner[-1]) + 1)


def set_dropout(module: nn.Module, p: float) -> None:
    """Every dropout inside `module` (sublayer outputs and attention probabilities) set to `p`:
    fine-tuning may want dropout back in a backbone pre-trained without it."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif hasattr(m, "attn_dropout"):  # attention modules (SelfAttention, T5Attention)
            m.attn_dropout = p


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) 1 = real token -> (B, 1, 1, T) bool for SDPA: every query sees the same keys, pad
    keys are hidden from all. None when nothing is padded: SDPA's fused kernels are several
    times faster without a mask."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]
