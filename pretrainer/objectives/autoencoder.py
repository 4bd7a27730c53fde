"""The autoencoder (and denoising autoencoder) on images: reconstruct the pixels from a code.

encoder = the image backbone (any that keeps the image transfer surface: resnet, vit, mlp);
code = its pooled features (B, d_model); decoder = an MLP head (objectives/heads.py PixelDecoder)
that stays behind at transfer; output = sigmoid(decoder(code)) (B, C, S, S). The loss compares
it with the clean image: mean squared error, or binary cross-entropy with the pixels read as
probabilities (`objective.loss`).

Denoising (Vincent et al., 2008): with `objective.noise` > 0 the encoder reads a corrupted image,
Gaussian noise of that std (clipped to [0, 1]) or that fraction of the pixels zeroed
(`objective.noise_type = "mask"`), and the target stays the clean image.

Held-out metrics (the same noise draws at every evaluation): recon_mse (per-pixel mean squared
error of the reconstruction, whatever the loss) and recon_loss (the training loss).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.objectives.base import PretrainingObjective, image_backbone_refusal
from pretrainer.objectives.heads import PixelDecoder, PretrainingModel
from pretrainer.objectives.mlm import evaluation_batches
from pretrainer.registry import OBJECTIVES

EVAL_SEED = 5678  # held-out noise is drawn the same way at every evaluation


@OBJECTIVES.register("autoencoder")
class Autoencoder(PretrainingObjective):
    batch_layout = "images"
    modality = "image"

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        super().__init__(cfg, data)
        self.layout_options = {"augment": False}  # the image itself is the target

    def check_backbone(self, backbone: nn.Module) -> str | None:
        return image_backbone_refusal(backbone, "the autoencoder reconstructs images",
                                      "use an image backbone, e.g. model.name = \"resnet\", with data.name = \"images\"")

    def build(self, backbone: nn.Module) -> PretrainingModel:
        return PretrainingModel(backbone, {"pixel_decoder": PixelDecoder(backbone, self.cfg.decoder_hidden)})

    def corrupt(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The encoder's input: `images` with the configured noise (none when objective.noise = 0)."""
        noise = self.cfg.noise
        if noise <= 0:
            return images
        if self.cfg.noise_type == "mask":
            keep = torch.rand(images.shape, generator=generator, device=images.device) >= noise
            return images * keep
        return (images + noise * torch.randn(images.shape, generator=generator, device=images.device)).clamp(0, 1)

    def reconstruct(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> pixel logits (B, C, S, S)."""
        hidden = model(images)  # (B, N, C)
        return model.pixel_decoder(model.pooled(hidden, None, "mean"))

    def loss_of(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return F.mse_loss(torch.sigmoid(logits.float()), target.float())

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        images = batch["images"]
        logits = self.reconstruct(model, self.corrupt(images))
        loss = self.loss_of(logits, images)
        with torch.no_grad():
            mse = F.mse_loss(torch.sigmoid(logits.float()), images.float())
        return {"loss": loss, "recon_mse": mse.detach(), "n_tokens": int(images.shape[0])}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        loss_sum = mse_sum = 0.0
        count = 0
        generator = None
        for batch in evaluation_batches(model, batches):
            images = batch["images"]
            if generator is None:
                generator = torch.Generator(device=images.device).manual_seed(EVAL_SEED)
            logits = self.reconstruct(model, self.corrupt(images, generator))
            n = images.shape[0]
            loss_sum += float(self.loss_of(logits, images)) * n
            mse_sum += float(F.mse_loss(torch.sigmoid(logits.float()), images.float())) * n
            count += n
        count = max(count, 1)
        return {"recon_loss": loss_sum / count, "recon_mse": mse_sum / count}
