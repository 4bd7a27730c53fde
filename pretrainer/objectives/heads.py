"""What pre-training trains around a backbone: its heads, and the module that holds both.

An objective's `build(backbone)` returns a `PretrainingModel`: the backbone plus the heads
that objective needs (an MLM head, a sentence-pair head, ...). `fit` trains and checkpoints
that module; the backbone alone transfers. Its state-dict keys are `backbone.*` and
`<head name>.*` (`mlm_head.*`, `nsp_head.*`), which are also the names the Hugging Face
layouts map (interop/hf_layout.py) once `backbone.` is dropped.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.errors import PretrainerError
from pretrainer.models.layers import activation_fn, decay_groups, init_weights


def word_embeddings(backbone: nn.Module) -> nn.Embedding:
    """The backbone's input word-embedding table, which an MLM head's decoder is tied to."""
    table = getattr(getattr(backbone, "embeddings", None), "word_embeddings", None)
    if table is None:
        table = getattr(backbone, "wte", None)
    if not isinstance(table, nn.Embedding):
        raise PretrainerError(f"model {backbone.config.name!r} has no word-embedding table for an MLM head")
    return table


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense + activation + LayerNorm, then the (tied) word embeddings + bias."""

    def __init__(self, d_model: int, vocab_size: int, activation: str = "gelu", eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = activation_fn(activation)
        self.ln = nn.LayerNorm(d_model, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.ln(self.act(self.dense(hidden)))


def mlm_head_for(backbone: nn.Module) -> MaskedLMHead:
    cfg = backbone.config
    return MaskedLMHead(backbone.d_model, word_embeddings(backbone).num_embeddings,
                        getattr(cfg, "activation", "gelu"), getattr(cfg, "layer_norm_eps", 1e-12))


def pair_head_for(backbone: nn.Module) -> nn.Linear:
    """Two-way classifier on the pooled [CLS] vector (NSP: is B next?, SOP: are A, B in order?)."""
    if not hasattr(backbone, "pooler"):
        raise PretrainerError(f"model {backbone.config.name!r} has no [CLS] pooler for a sentence-pair head; "
                              f"use an encoder (model.name = \"bert\")")
    return nn.Linear(backbone.d_model, 2)


# Head name -> how it is built for a backbone. A run's model.json lists its heads by these
# names, so `pretraining_model` rebuilds the module without knowing the objective.
HEADS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "mlm_head": mlm_head_for,
    "nsp_head": pair_head_for,
    "sop_head": pair_head_for,
}


class PretrainingModel(nn.Module):
    """A backbone and the heads an objective trains. Shows the backbone's transfer surface
    (`forward`, `pooled`, `config`, `d_model`, `layer_id`, `param_groups`) so code that reads
    features (cloze prompts, evaluation) can take either."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module] | None = None):
        super().__init__()
        self.backbone = backbone
        self.head_names = sorted(heads or {})
        for name in self.head_names:
            head = heads[name]
            init_weights(head, getattr(backbone.config, "init_std", 0.02))
            ref = next(backbone.parameters())
            self.add_module(name, head.to(device=ref.device, dtype=ref.dtype))

    @property
    def config(self):
        return self.backbone.config

    @property
    def d_model(self) -> int:
        return self.backbone.d_model

    @property
    def n_layers(self) -> int:
        return self.backbone.n_layers

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.backbone(*args, **kwargs)

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pooling: str = "cls") -> torch.Tensor:
        return self.backbone.pooled(hidden, attention_mask, pooling)

    def lm_projection(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(features, weight, bias) with logits = features @ weight.T + bias: through the MLM head
        when there is one, else the backbone's own LM head (a GPT decoder)."""
        if "mlm_head" in self.head_names:
            head = self.mlm_head
            return head.transform(hidden), word_embeddings(self.backbone).weight, head.bias
        if hasattr(self.backbone, "lm_projection"):
            return self.backbone.lm_projection(hidden)
        raise PretrainerError(f"model {self.config.name!r} was not pre-trained with a language-model head")

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., V); masked LM gathers the chosen positions first, e.g. (N, C)."""
        return F.linear(*self.lm_projection(hidden))

    @property
    def has_lm_head(self) -> bool:
        return "mlm_head" in self.head_names or hasattr(self.backbone, "lm_projection")

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)

    def layer_id(self, param_name: str) -> int:
        if param_name.startswith("backbone."):
            return self.backbone.layer_id(param_name[len("backbone."):])
        return self.backbone.n_layers + 1


def pretraining_model(backbone: nn.Module, head_names) -> PretrainingModel:
    """Rebuild a saved module from its backbone and the head names model.json lists."""
    unknown = sorted(set(head_names) - set(HEADS))
    if unknown:
        raise PretrainerError(f"model.json names unknown pre-training heads {unknown}; known: {sorted(HEADS)}")
    return PretrainingModel(backbone, {name: HEADS[name](backbone) for name in head_names})


def nest_backbone_keys(state: dict[str, torch.Tensor], head_names) -> dict[str, torch.Tensor]:
    """The one key adapter for weights saved with the heads inside the backbone (runs made before
    heads moved to objectives, and the flat Hugging Face layout): `embeddings.x` ->
    `backbone.embeddings.x`; head keys (`mlm_head.x`) stay; heads not in `head_names` drop."""
    heads = tuple(f"{name}." for name in HEADS)
    keep = tuple(f"{name}." for name in head_names)
    out = {}
    for key, value in state.items():
        if key.startswith(heads):
            if key.startswith(keep):
                out[key] = value
        else:
            out["backbone." + key] = value
    return out


def adopt_heads(module: PretrainingModel, source: nn.Module) -> list[str]:
    """Copy into `module` the heads `source` has under the same names, so continued pre-training
    keeps a trained MLM head; returns the names of the heads that start fresh."""
    source_heads = source.head_names if isinstance(source, PretrainingModel) else []
    fresh = []
    for name in module.head_names:
        if name in source_heads:
            getattr(module, name).load_state_dict(getattr(source, name).state_dict())
        else:
            fresh.append(name)
    return fresh
