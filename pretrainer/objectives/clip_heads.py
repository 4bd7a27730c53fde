"""The heads CLIP trains around an image backbone and leaves behind at transfer: the text tower
(a text model from the registry and its projection), the image projection and the learned
temperature. The text tower's architecture is its head config, so model.json rebuilds it."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

CLIP_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps 1 / temperature at 100


class CLIPTextTower(nn.Module):
    """Captions -> the shared space: a text encoder (any text model of the registry, e.g. BERT),
    mean-pooled over the real tokens, through a linear map without bias."""

    def __init__(self, backbone: nn.Module, text_model: dict, d_out: int):
        super().__init__()
        from pretrainer.models import model_from_config_dict  # the registry: imported when built
        from pretrainer.models.heads import freeze_pooler

        self.encoder = model_from_config_dict(text_model)
        freeze_pooler(self.encoder)  # mean pooling never reads the [CLS] pooler (DDP wants every gradient)
        self.d_out = d_out
        self.proj = nn.Linear(self.encoder.d_model, d_out, bias=False)

    def head_config(self) -> dict:
        from pretrainer.models import model_config_dict

        return {"text_model": model_config_dict(self.encoder), "d_out": self.d_out}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, d_out)."""
        hidden = self.encoder(input_ids, attention_mask)
        return self.proj(self.encoder.pooled(hidden, attention_mask, "mean"))


class CLIPImageProjection(nn.Module):
    """The image backbone's pooled vector -> the shared space (linear, no bias, as CLIP's)."""

    def __init__(self, backbone: nn.Module, d_out: int):
        super().__init__()
        self.d_out = d_out
        self.proj = nn.Linear(backbone.d_model, d_out, bias=False)

    def head_config(self) -> dict:
        return {"d_out": self.d_out}

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)


class LogitScale(nn.Module):
    """CLIP's learned temperature as log(1 / T), clamped at log(100) where it is read; the
    objective sets its starting value (objective.temperature)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=CLIP_MAX_LOGIT_SCALE).exp()
