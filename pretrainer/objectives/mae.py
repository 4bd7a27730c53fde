"""Masked autoencoder (He et al., 2021): hide most of an image's patches, paint them back.

Per image, a random `objective.mask_rate` of the patches (exactly round(rate * N), at least
one kept and one hidden) is hidden. The ViT encoder (the backbone, which transfers) runs on
the visible patches alone (`backbone(images, keep=...)`, models/vit.py), which is what makes
MAE cheap: with 75% hidden it reads a quarter of the tokens. A light decoder (the
`mae_decoder` head, objectives/image_heads.py; `objective.decoder_layers` blocks of
`objective.decoder_dim`) puts a mask token at each hidden place and predicts every patch's
pixels; the loss is the mean squared error over the hidden patches only. With
`objective.norm_pix` the target is each patch's pixels normalised by that patch's mean and
standard deviation, the paper's better variant.

Batches: the "images" layout, augmented (the paper trains with random resized crops; the
[data] section says how much). Held-out metric: mae_loss, with the same masks every
evaluation (a generator seeded with EVAL_SEED), so evaluations compare.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from pretrainer.config import ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.models.vit import patchify
from pretrainer.objectives.base import PretrainingObjective
from pretrainer.objectives.heads import PretrainingModel
from pretrainer.objectives.image_heads import MAEDecoder
from pretrainer.objectives.mlm import evaluation_batches
from pretrainer.registry import OBJECTIVES

EVAL_SEED = 2468  # held-out images hide the same patches at every evaluation


def hidden_count(rate: float, n_patches: int) -> int:
    """Patches hidden per image: round(rate * N), keeping at least one visible and one hidden."""
    return min(max(round(rate * n_patches), 1), n_patches - 1)


def choose_visible(batch_size: int, n_patches: int, rate: float, device: torch.device,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (keep (B, n_visible) grid indices of the visible patches in ascending order,
    hidden (B, N) bool, True = hidden): a uniformly random subset per image."""
    n_visible = n_patches - hidden_count(rate, n_patches)
    noise = torch.rand(batch_size, n_patches, device=device, generator=generator)
    keep = noise.argsort(dim=1)[:, :n_visible].sort(dim=1).values  # (B, n_visible)
    hidden = torch.ones(batch_size, n_patches, dtype=torch.bool, device=device)
    hidden.scatter_(1, keep, False)
    return keep, hidden


def pixel_targets(images: torch.Tensor, patch_size: int, norm_pix: bool) -> torch.Tensor:
    """(B, C, S, S) -> (B, N, p * p * C): each patch's pixels, normalised per patch when `norm_pix`."""
    target = patchify(images.float(), patch_size)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return target


@OBJECTIVES.register("mae")
class MaskedAutoencoder(PretrainingObjective):
    batch_layout = "images"
    modality = "image"

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        super().__init__(cfg, data)
        self.mask_rate = cfg.mask_rate
        self.norm_pix = cfg.norm_pix
        self.layout_options = {"augment": True}

    def check_backbone(self, backbone: nn.Module) -> str | None:
        if not hasattr(backbone, "n_patches") or not hasattr(backbone, "patch_size"):
            return (f"MAE hides patches from a Vision Transformer's encoder; model {backbone.config.name!r} does not "
                    f"read images as patches (use model.name = \"vit\")")
        return None

    def caution(self, backbone: nn.Module) -> str | None:
        if self.mask_rate < 0.5:
            return (f"mae hides objective.mask_rate = {self.mask_rate} of the patches (0.15 is masked LM's default); "
                    f"neighbouring patches then give most pixels away; the paper hides 0.75")
        return None

    def build(self, backbone: nn.Module) -> PretrainingModel:
        decoder = MAEDecoder(backbone, self.cfg.decoder_layers, self.cfg.decoder_dim)
        return PretrainingModel(backbone, {"mae_decoder": decoder})

    def losses(self, model: nn.Module, images: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean squared error per patch (B, N), hidden (B, N) bool)."""
        backbone = model.backbone
        keep, hidden = choose_visible(images.shape[0], backbone.n_patches, self.mask_rate, images.device, generator)
        latent = model(images, keep=keep)  # (B, 1 + n_visible, C): [CLS] and the visible patches
        predicted = model.mae_decoder(latent, keep)  # (B, N, p * p * C)
        target = pixel_targets(images, backbone.patch_size, self.norm_pix)
        return (predicted.float() - target).pow(2).mean(dim=-1), hidden

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        per_patch, hidden = self.losses(model, batch["images"])
        loss = per_patch[hidden].mean()  # only the hidden patches: the visible ones were given
        return {"loss": loss, "n_tokens": int(batch["images"].shape[0])}  # images, for images/s

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        loss_sum, count = 0.0, 0
        generator = None
        for batch in evaluation_batches(model, batches):
            images = batch["images"]
            if generator is None:
                generator = torch.Generator(images.device).manual_seed(EVAL_SEED)
            per_patch, hidden = self.losses(model, images, generator)
            loss_sum += float(per_patch[hidden].sum())
            count += int(hidden.sum())
        return {"mae_loss": loss_sum / max(count, 1)}
