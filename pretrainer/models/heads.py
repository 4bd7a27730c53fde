"""Task heads that sit on any backbone's transfer surface."""

from __future__ import annotations

import torch
import torch.nn as nn

from pretrainer.models.layers import decay_groups, layer_decay_groups


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

    def __init__(self, backbone: nn.Module, num_labels: int, dropout: float, layer_decay: float | None):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.num_labels = num_labels
        self.layer_decay = layer_decay  # None: one learning rate for every layer
        self.head = self._new_head(num_labels)

    def _new_head(self, num_labels: int) -> nn.Linear:
        head = nn.Linear(self.backbone.d_model, num_labels)
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
    """backbone -> pooled sentence vector -> dropout -> linear -> logits (B, num_labels)."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "cls", dropout: float = 0.1,
                 layer_decay: float | None = None):
        super().__init__(backbone, num_labels, dropout, layer_decay)
        self.pooling = pooling

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch.get("attention_mask")
        hidden = self.backbone(batch["input_ids"], mask, batch.get("token_type_ids"))  # (B, T, C)
        pooled = self.backbone.pooled(hidden, mask, self.pooling)  # (B, C)
        return self.head(self.dropout(pooled))


class TokenClassifier(_BackboneHead):
    """backbone -> dropout -> linear on every token -> logits (B, T, num_labels) (NER tagging)."""

    def __init__(self, backbone: nn.Module, num_labels: int, dropout: float = 0.1,
                 layer_decay: float | None = None):
        super().__init__(backbone, num_labels, dropout, layer_decay)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.backbone(batch["input_ids"], batch.get("attention_mask"),
                               batch.get("token_type_ids"))  # (B, T, C)
        return self.head(self.dropout(hidden))
