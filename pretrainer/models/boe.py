"""A bag of embeddings (fastText-style): a word-vector table, an optional per-token projection,
and mean pooling. No attention, no positions: a text is the average of its pieces' vectors.

Two uses. It is what word2vec trains (objectives/word2vec.py: the table alone, `hidden = 0`),
so a word-vector run is a run like any other, and `finetune.init = <that run>` fine-tunes it as
the fastText-style classifier baseline. And its table is what `model.init_embeddings` copies
into a Transformer's word embeddings before masked LM (interop/word_vectors.py).

Module tree: `embeddings.word_embeddings` (V, d_model), the name BERT uses, so code that edits
input vectors (soft prompts, case features, an MLM head's tied decoder) finds it; `proj`
(d_model -> hidden) when `hidden > 0`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from pretrainer.config import ModelConfig, _field, dropout_rate, non_negative, positive
from pretrainer.models.layers import ACTIVATIONS, activation_fn, decay_groups, init_weights, masked_mean
from pretrainer.registry import MODELS


@dataclass
class BoEConfig(ModelConfig):
    name: str = _field("boe", "architecture from the model registry")
    vocab_size: int = _field(0, "vocabulary size (0 = the tokenizer's)", check=non_negative)
    d_model: int = _field(256, "width of the word vectors (the embedding table)", check=positive)
    hidden: int = _field(0, "a per-token projection d_model -> hidden with an activation before pooling "
                            "(0 = none: the classifier reads the averaged word vectors themselves; "
                            "word2vec trains only a model without one)", check=non_negative)
    activation: str = _field("gelu", "activation after the projection (hidden > 0)", ACTIVATIONS)
    dropout: float = _field(0.0, "dropout on the word vectors (fastText uses none)", check=dropout_rate)
    init_std: float = _field(0.02, "std of the normal weight initialisation", check=positive)

    @classmethod
    def tiny(cls) -> BoEConfig:
        """Width 32, no projection: the registry contract tests' size (word2vec can train it)."""
        return cls(d_model=32)


class WordEmbeddings(nn.Module):
    """Holds the table under BERT's name (`embeddings.word_embeddings`)."""

    def __init__(self, cfg: BoEConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)


@MODELS.register("boe")
class BagOfEmbeddings(nn.Module):
    config_class = BoEConfig
    causal = False
    contextual = False  # a token's output never depends on its neighbours: nothing for masked LM to learn

    def __init__(self, config: BoEConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("BoEConfig.vocab_size is 0: build the model with build_model(cfg, vocab_size)")
        self.config = config
        self.embeddings = WordEmbeddings(config)
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(config.d_model, config.hidden) if config.hidden else None
        self.act = activation_fn(config.activation) if config.hidden else None
        self.d_model = config.hidden or config.d_model  # the width of what forward returns
        self.n_layers = 1 if config.hidden else 0  # the projection is the one layer above the table
        init_weights(self, config.init_std)

    @property
    def word_vector_table(self) -> nn.Embedding | None:
        """The table a word-vector objective trains: only a model whose output is the table itself."""
        return self.embeddings.word_embeddings if self.proj is None else None

    def forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> (B, T, d_model): each token's vector (projected when hidden > 0).
        attention_mask and token_type_ids are accepted for the common surface; a token's output
        depends on nothing else, and pooling is where pads are left out."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        x = self.embeddings.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        x = self.dropout(x)
        return x if self.proj is None else self.act(self.proj(x))

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pooling: str = "mean") -> torch.Tensor:
        """(B, T, C) -> (B, C): the mean over real tokens. No position sees the whole text, so
        "cls" means the mean too (fine-tuning configs written for BERT work unchanged)."""
        if pooling in ("mean", "cls"):
            return masked_mean(hidden, attention_mask)
        raise ValueError(f"unknown pooling {pooling!r} for boe; choose mean (cls is the mean too)")

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)

    def layer_id(self, param_name: str) -> int:
        """Depth for layer-wise rules: the table 0, the projection 1, heads above."""
        if param_name.startswith("embeddings."):
            return 0
        return 1 if param_name.startswith("proj.") else self.n_layers + 1
