"""SimCLR (Chen et al., 2020): two augmented views of an image are each other's positive.

The "views" layout gives each image twice, independently augmented (`images`, `images2`;
the [data] section says which augmentations). Both views go through the backbone in one
pass, are pooled (the mean of the output tokens: a ViT's patch tokens, a CNN's global
average), and go through the projection MLP (`simclr_projection`, objective.projection_dim
wide, a head left behind at transfer). The loss is NT-Xent: for each of the 2B views, a
softmax over the cosine similarities / objective.temperature to every other view of the
batch, whose target is the other view of the same image; both directions (view 1 -> 2 and
2 -> 1) are queries, and a view never counts itself. Under torchrun every rank's projections
are gathered (objectives/gather.py, gradients flow back to the rank that made them), so the
negatives are the whole global batch, as in one process. The InfoNCE itself is SimCSE's
(objectives/simcse.py `info_nce`), with the query's own row left out.

Held-out metrics (eval mode), within each held-out batch:
- simclr_loss: NT-Xent;
- simclr_acc: how often a view's most similar other view is its own image's (top-1 retrieval).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from pretrainer.config import ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.objectives.base import PretrainingObjective, image_backbone_refusal
from pretrainer.objectives.gather import gather_rows
from pretrainer.objectives.heads import PretrainingModel
from pretrainer.objectives.image_heads import ProjectionMLP
from pretrainer.objectives.mlm import evaluation_batches
from pretrainer.objectives.simcse import info_nce
from pretrainer.registry import OBJECTIVES


def nt_xent(z: torch.Tensor, temperature: float, gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """z (2n, D): this rank's first views then its second views (row i and i + n are one image).
    -> (mean NT-Xent over the 2n views, hits (2n,) bool). With `gather`, every rank's rows are
    the candidates (rank r's rows sit at r * 2n .. r * 2n + 2n - 1 of the gathered keys)."""
    n2 = z.shape[0]
    keys, offset = gather_rows(z) if gather else (z, 0)  # (W * 2n, D)
    local = torch.arange(n2, device=z.device)
    positives = offset + (local + n2 // 2) % n2  # the other view of the same image
    return info_nce(z, keys, positives, temperature, exclude=offset + local)


@OBJECTIVES.register("simclr")
class SimCLR(PretrainingObjective):
    batch_layout = "views"
    modality = "image"

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        super().__init__(cfg, data)
        self.temperature = cfg.temperature

    def check_backbone(self, backbone: nn.Module) -> str | None:
        return image_backbone_refusal(backbone, "SimCLR compares augmented views of images",
                                      "use an image model, e.g. model.name = \"vit\"; SimCSE is the sentence counterpart")

    def build(self, backbone: nn.Module) -> PretrainingModel:
        return PretrainingModel(backbone, {"simclr_projection": ProjectionMLP(backbone, self.cfg.projection_dim)})

    def project(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, projection_dim)."""
        return model.simclr_projection(model.pooled(model(images), None, "mean"))

    def loss_terms(self, model: nn.Module, batch: dict, gather: bool = True):
        """-> (loss, hits (2B,)): both views of the batch in one forward pass (view-major)."""
        z = self.project(model, torch.cat([batch["images"], batch["images2"]]))  # (2B, D)
        return nt_xent(z, self.temperature, gather)

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        loss, hits = self.loss_terms(model, batch)
        return {"loss": loss, "simclr_acc": hits.float().mean().detach(),
                "n_tokens": 2 * int(batch["images"].shape[0])}  # images seen, for images/s

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        loss_sum = hits = 0.0
        count = 0
        for batch in evaluation_batches(model, batches):
            loss, hit = self.loss_terms(model, batch, gather=False)
            loss_sum += float(loss) * hit.numel()
            hits += float(hit.sum())
            count += hit.numel()
        count = max(count, 1)
        return {"simclr_loss": loss_sum / count, "simclr_acc": hits / count}
