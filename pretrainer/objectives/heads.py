"""What pre-training trains around a backbone: its heads, and the module that holds both.

An objective's `build(backbone)` returns a `PretrainingModel`: the backbone plus the heads
that objective needs (an MLM head, a sentence-pair head, ...). `fit` trains and checkpoints
that module; the backbone alone transfers. Its state-dict keys are `backbone.*` and
`<head name>.*` (`mlm_head.*`, `nsp_head.*`), which are also the names the Hugging Face
layouts map (interop/hf_layout.py) once `backbone.` is dropped.

A head whose shape is not fixed by the backbone (ELECTRA's generator, whose depth and width
are the objective's choice) has `head_config() -> dict`; model.json then lists it as
`{"name": ..., "config": {...}}` and its builder takes that config as keyword arguments.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.errors import PretrainerError
from pretrainer.models.layers import Block, activation_fn, decay_groups, init_weights, padding_mask
from pretrainer.objectives.gan_heads import DCGANGenerator, real_fake_head_for
from pretrainer.objectives.clip_heads import CLIPImageProjection, CLIPTextTower, LogitScale
from pretrainer.objectives.image_heads import MAEDecoder, ProjectionMLP


def word_embeddings(backbone: nn.Module) -> nn.Embedding:
    """The backbone's input word-embedding table, which an MLM head's decoder is tied to."""
    table = getattr(getattr(backbone, "embeddings", None), "word_embeddings", None)
    if table is None:
        table = getattr(backbone, "wte", None)
    if not isinstance(table, nn.Embedding):
        raise PretrainerError(f"model {backbone.config.name!r} has no word-embedding table for an MLM head")
    return table


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense + activation + LayerNorm, then the (tied) word embeddings + bias.
    `d_in` is the width it reads when that is not the embeddings' (a narrow generator's)."""

    def __init__(self, d_model: int, vocab_size: int, activation: str = "gelu", eps: float = 1e-12,
                 d_in: int | None = None):
        super().__init__()
        self.dense = nn.Linear(d_in or d_model, d_model)
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


def rtd_head_for(backbone: nn.Module) -> nn.Linear:
    """ELECTRA's replaced-token detector: one logit per position of the backbone's output."""
    return nn.Linear(backbone.d_model, 1)


class MaskedLMGenerator(nn.Module):
    """ELECTRA's generator: a small bidirectional encoder that reads the backbone's embedding
    module (the same module, so word, position and segment tables are shared, not copied) and
    predicts masked tokens through an MLM head whose decoder is the shared word embedding.

    Narrower than the backbone it projects the embeddings in (Hugging Face ElectraModel's
    `embeddings_project`), and its head maps back to the embedding width before the decoder.
    """

    def __init__(self, backbone: nn.Module, n_layers: int, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        cfg = backbone.config
        self.embeddings = backbone.embeddings  # shared: registered here too, stored once (io.model_tensors)
        self.sizes = {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_ff": d_ff}
        d_embed = backbone.d_model
        activation, eps = getattr(cfg, "activation", "gelu"), getattr(cfg, "layer_norm_eps", 1e-12)
        norm_first = getattr(cfg, "norm_first", False)
        self.project = nn.Linear(d_embed, d_model) if d_model != d_embed else None
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, cfg.dropout, getattr(cfg, "attn_dropout", cfg.dropout), activation,
                  norm_first, eps) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=eps) if norm_first else None
        self.head = MaskedLMHead(d_embed, word_embeddings(backbone).num_embeddings, activation, eps, d_in=d_model)

    def head_config(self) -> dict[str, int]:
        return dict(self.sizes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> hidden (B, T, d_model of the generator)."""
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C of the backbone)
        if self.project is not None:
            x = self.project(x)
        mask = padding_mask(attention_mask)  # (B, 1, 1, T) or None, as in BertModel
        for block in self.blocks:
            x = block(x, mask)
        return x if self.ln_f is None else self.ln_f(x)

    def lm_projection(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, weight, bias) with logits = features @ weight.T + bias, as PretrainingModel's."""
        return self.head.transform(hidden), self.embeddings.word_embeddings.weight, self.head.bias


class WidthProjection(nn.Module):
    """Learned linear maps from the backbone's width to a teacher's (`d_teacher`), `n` of them:
    distillation's student -> teacher projections (one per hidden-state layer pair, or one for
    the pooled vector). Trained with the student, never part of the exported backbone."""

    def __init__(self, backbone: nn.Module, d_teacher: int, n: int = 1):
        super().__init__()
        self.sizes = {"d_teacher": d_teacher, "n": n}
        self.maps = nn.ModuleList(nn.Linear(backbone.d_model, d_teacher) for _ in range(n))

    def head_config(self) -> dict[str, int]:
        return dict(self.sizes)

    def forward(self, hidden: torch.Tensor, i: int = 0) -> torch.Tensor:
        """(..., C of the backbone) -> (..., d_teacher) through map `i`."""
        return self.maps[i](hidden)


class SentenceMLP(nn.Module):
    """SimCSE's MLP over the [CLS] vector (dense + tanh), trained with the contrastive loss and
    left behind at transfer, as the paper's unsupervised recipe does."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.dense = nn.Linear(backbone.d_model, backbone.d_model)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls))


class ContextEmbeddings(nn.Module):
    """word2vec's second table: each piece's vector as a context (and as a noise word), trained
    with the backbone's table and never transferred. It starts at zero, as in word2vec.

    `token_counts` (V,) int64 are the corpus' piece counts that the noise and subsampling
    distributions come from: a buffer, so checkpoints and the saved run keep them and a resumed
    run (or the gensim engine) reads the same distributions without the data."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        vocab_size, width = word_embeddings(backbone).weight.shape
        self.weight = nn.Parameter(torch.zeros(vocab_size, width))
        self.register_buffer("token_counts", torch.zeros(vocab_size, dtype=torch.int64))


class PixelDecoder(nn.Module):
    """The autoencoder's decoder: an image backbone's pooled code (B, d_model) -> hidden -> GELU ->
    pixel logits (B, C, S, S) (sigmoid gives the image). An objective head: trained with the
    backbone, never transferred."""

    def __init__(self, backbone: nn.Module, hidden: int = 512):
        super().__init__()
        cfg = backbone.config
        self.shape = (cfg.channels, cfg.image_size, cfg.image_size)
        self.hidden = hidden
        self.fc = nn.Linear(backbone.d_model, hidden)
        self.out = nn.Linear(hidden, cfg.channels * cfg.image_size * cfg.image_size)

    def head_config(self) -> dict[str, int]:
        return {"hidden": self.hidden}

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(code))).view(-1, *self.shape)


# Head name -> how it is built for a backbone (and, for a head with `head_config`, that config).
# A run's model.json lists its heads by these names, so `pretraining_model` rebuilds the module
# without knowing the objective.
HEADS: dict[str, Callable[..., nn.Module]] = {
    "mlm_head": mlm_head_for,
    "nsp_head": pair_head_for,
    "sop_head": pair_head_for,
    "rtd_head": rtd_head_for,
    "generator": MaskedLMGenerator,
    "distill_pooled": WidthProjection,
    "distill_hidden": WidthProjection,
    "simcse_mlp": SentenceMLP,
    "context_embeddings": ContextEmbeddings,
    "mae_decoder": MAEDecoder,
    "simclr_projection": ProjectionMLP,
    "pixel_decoder": PixelDecoder,
    "gan_generator": DCGANGenerator,
    "gan_real_fake": real_fake_head_for,
    "clip_text": CLIPTextTower,
    "clip_image_projection": CLIPImageProjection,
    "clip_logit_scale": LogitScale,
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
            init_weights(head, getattr(backbone.config, "init_std", 0.02), keep=backbone)
            ref = next(backbone.parameters())
            self.add_module(name, head.to(device=ref.device, dtype=ref.dtype))

    @property
    def config(self):
        return self.backbone.config

    def head_specs(self) -> list[str | dict[str, Any]]:
        """model.json's `"heads"`: a name, or {"name", "config"} for a head with `head_config`."""
        specs = []
        for name in self.head_names:
            head = getattr(self, name)
            specs.append({"name": name, "config": head.head_config()} if hasattr(head, "head_config") else name)
        return specs

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


def pretraining_model(backbone: nn.Module, head_specs) -> PretrainingModel:
    """Rebuild a saved module from its backbone and the heads model.json lists: names, or
    {"name", "config"} entries for heads built from their own config."""
    heads = {}
    for spec in head_specs:
        name, config = (spec, {}) if isinstance(spec, str) else (spec.get("name"), spec.get("config") or {})
        if name not in HEADS:
            raise PretrainerError(f"model.json names unknown pre-training head {name!r}; known: {sorted(HEADS)}")
        try:
            heads[name] = HEADS[name](backbone, **config)
        except TypeError as e:
            raise PretrainerError(f"model.json: pre-training head {name!r} cannot be built from "
                                  f"config {config}: {e}") from None
    return PretrainingModel(backbone, heads)


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
    source_specs = source.head_specs() if isinstance(source, PretrainingModel) else []
    fresh = []
    for name, spec in zip(module.head_names, module.head_specs()):
        if spec in source_specs:  # same name and, for a sized head (a generator), the same size
            getattr(module, name).load_state_dict(getattr(source, name).state_dict())
        else:
            fresh.append(name)
    return fresh
