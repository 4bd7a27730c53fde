"""Task heads that sit on any backbone's transfer surface."""

from __future__ import annotations

import torch
import torch.nn as nn

from pretrainer.errors import PretrainerError
from pretrainer.models.crf import LinearChainCRF
from pretrainer.models.layers import decay_groups, layer_decay_groups, pool_chunks

# Rows of the case-feature table: one per word shape the data side tells apart
# (data/conll.WORD_SHAPES; models and data do not import each other, a test keeps them equal).
N_WORD_SHAPES = 6


def word_embedding_table(backbone: nn.Module, feature: str) -> nn.Embedding:
    """The backbone's word-embedding table, for features that edit the input vectors (soft
    prompts, case features); a backbone without one (GPT) is refused naming `feature`."""
    words = getattr(getattr(backbone, "embeddings", None), "word_embeddings", None)
    if not isinstance(words, nn.Embedding):
        raise PretrainerError(f"{feature} need a BERT-style encoder; {type(backbone).__name__} has no "
                              f"embeddings.word_embeddings")
    return words


def freeze_pooler(backbone: nn.Module) -> None:
    """A head that never reads the [CLS] pooler freezes it: every parameter left trainable then
    gets a gradient each step, which DDP without find_unused_parameters requires."""
    pooler = getattr(backbone, "pooler", None)
    if pooler is not None:
        pooler.requires_grad_(False)


def freeze_decoder(backbone: nn.Module) -> None:
    """A task head reads an encoder–decoder's encoder only (`forward`): its decoder is frozen, for
    the same reason as the pooler."""
    if hasattr(backbone, "freeze_decoder"):
        backbone.freeze_decoder()


class WrapsBackbone(nn.Module):
    """A module built around `self.backbone`: it shows the backbone's config and width, and
    places its own parameters above the backbone's top layer for layer-wise rules."""

    @property
    def config(self):
        return self.backbone.config

    @property
    def d_model(self) -> int:
        return self.backbone.d_model

    def layer_id(self, param_name: str) -> int:
        """Backbone depth for `backbone.*` names; anything else sits above the top layer."""
        if param_name.startswith("backbone."):
            return self.backbone.layer_id(param_name[len("backbone."):])
        return self.backbone.n_layers + 1


class _BackboneHead(WrapsBackbone):
    """What every task head shares: the backbone's transfer surface, dropout and a linear head."""

    def __init__(self, backbone: nn.Module, num_labels: int, dropout: float, layer_decay: float | None,
                 head_width: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.head_width = head_width or backbone.d_model  # what the linear head reads
        self.dropout = nn.Dropout(dropout)
        self.num_labels = num_labels
        self.layer_decay = layer_decay  # None: one learning rate for every layer
        self.head = self._new_head(num_labels)

    def _new_head(self, num_labels: int) -> nn.Linear:
        head = nn.Linear(self.head_width, num_labels)
        nn.init.normal_(head.weight, mean=0.0, std=getattr(self.backbone.config, "init_std", 0.02))
        nn.init.zeros_(head.bias)
        ref = next(self.backbone.parameters())
        return head.to(device=ref.device, dtype=ref.dtype)

    def reset_head(self, num_labels: int) -> None:
        """A fresh, randomly initialised head for a new label set; the backbone is kept."""
        self.num_labels = num_labels
        self.head = self._new_head(num_labels)

    def param_groups(self, weight_decay: float) -> list[dict]:
        if self.layer_decay is not None:
            return layer_decay_groups(self, weight_decay, self.layer_decay)
        return decay_groups(self, weight_decay)


class SequenceClassifier(_BackboneHead):
    """backbone -> pooled sentence vector -> dropout -> linear -> logits (B, num_labels).

    A batch of long documents cut into chunks (data/long_documents.py) has one row per chunk
    and batch["chunk_doc"] (N,), each row's document: the chunks are encoded in one backbone
    call and their pooled vectors pooled again per document (`chunk_pooling`: mean or max)."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "cls", dropout: float = 0.1,
                 layer_decay: float | None = None, chunk_pooling: str = "mean"):
        # A pooling may be wider than the hidden states (an LSTM's "concat" = [last, max, mean]).
        width = backbone.pooled_width(pooling) if hasattr(backbone, "pooled_width") else backbone.d_model
        super().__init__(backbone, num_labels, dropout, layer_decay, head_width=width)
        self.pooling = pooling
        self.chunk_pooling = chunk_pooling
        if pooling != "cls":
            freeze_pooler(backbone)
        freeze_decoder(backbone)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.dropout(self.features(batch)))

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The pooled vector the head reads (B, C): of the text, or of the image for an image
        backbone (batch["images"] (B, C, S, S) -> (B, N, C) feature tokens)."""
        if "images" in batch:
            return self.backbone.pooled(self.backbone(batch["images"]), None, self.pooling)
        mask = batch.get("attention_mask")
        hidden = self.backbone(batch["input_ids"], mask, batch.get("token_type_ids"))  # (B or N chunks, T, C)
        pooled = self.backbone.pooled(hidden, mask, self.pooling)  # (B or N, C)
        if batch.get("chunk_doc") is not None:
            pooled = pool_chunks(pooled, batch["chunk_doc"], self.chunk_pooling)  # (B, C)
        return pooled


class TokenClassifier(_BackboneHead):
    """backbone -> dropout -> linear on every token -> logits (B, T, num_labels) (NER tagging).

    case_features adds a learned vector per word shape (batch["case_ids"], see
    data/conll.WORD_SHAPES) to each token's word embedding, giving an uncased encoder back the
    capitalisation its tokenizer dropped. The vectors start at zero, so training starts from
    the backbone's own outputs.

    crf adds a linear-chain CRF (models/crf.py) over the words' logits: the objective then
    trains and decodes whole tag sequences. Its transition scores start at zero and train at
    their own rate, `crf_lr` (None: the rate of the rest of the head).
    """

    def __init__(self, backbone: nn.Module, num_labels: int, dropout: float = 0.1,
                 layer_decay: float | None = None, case_features: bool = False, crf: bool = False,
                 crf_lr: float | None = None):
        super().__init__(backbone, num_labels, dropout, layer_decay)
        freeze_pooler(backbone)
        freeze_decoder(backbone)
        self.case_embeddings = None
        if case_features:
            words = word_embedding_table(backbone, "case features (finetune.case_features)")
            self.case_embeddings = nn.Embedding(N_WORD_SHAPES, backbone.d_model).to(words.weight.device)
            nn.init.zeros_(self.case_embeddings.weight)
        self.crf = None
        if crf:
            self.crf = LinearChainCRF(num_labels).to(next(backbone.parameters()).device)
        self.crf_lr = crf_lr

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask, types = batch.get("attention_mask"), batch.get("token_type_ids")
        if self.case_embeddings is None:
            hidden = self.backbone(batch["input_ids"], mask, types)  # (B, T, C)
        else:
            words = self.backbone.embeddings.word_embeddings(batch["input_ids"])  # (B, T, C)
            words = words + self.case_embeddings(batch["case_ids"])
            hidden = self.backbone(None, mask, types, inputs_embeds=words)
        return self.head(self.dropout(hidden))

    def param_groups(self, weight_decay: float) -> list[dict]:
        groups = super().param_groups(weight_decay)
        if self.crf is None or self.crf_lr is None:
            return groups
        crf = {id(p) for p in self.crf.parameters()}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in crf]} for g in groups]
        # Last: the logged rate stays group 0's, the encoder's peak.
        trainable = [p for p in self.crf.parameters() if p.requires_grad]
        return [g for g in groups if g["params"]] + [{"params": trainable, "weight_decay": 0.0, "lr": self.crf_lr}]
