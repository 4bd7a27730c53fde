"""DCGAN (Radford et al., 2015) as pre-training: the discriminator's body is the image backbone.

generator = objectives/gan_heads.py DCGANGenerator (z -> transposed convolutions with BatchNorm
-> pixels in [0, 1]); discriminator = the registry backbone (resnet, vit, ...) -> mean-pooled
features -> a real/fake logit (`gan_real_fake`). Both heads stay behind at transfer; the
backbone, having learned to tell digits from forgeries, is what fine-tuning and probes read.

Training is adversarial (training/adversarial.py): two optimizer groups stepped in turn on the
same batch of real images, first the discriminator on the real images and detached fakes
(-log D(x) - log(1 - D(G(z)))), then the generator with the non-saturating loss -log D(G(z)).
Each call draws its own z from the torch RNG, which checkpoints keep, so resume is exact. Under
torchrun fit refuses it (one process only).

Held-out metrics (eval mode, the same z at every evaluation): d_loss, g_loss, d_real_acc (real
images called real), d_fake_acc (generated images called fake), d_acc (their mean, 0.5 = chance), and pixel_mean_gap, |mean pixel
of the samples - that of the real images| (does the generator move towards the data?). A GAN's
loss need not fall, so tests/test_registry_contracts.py holds it to its own contract instead.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.objectives.base import PretrainingObjective, image_backbone_refusal
from pretrainer.objectives.gan_heads import DCGANGenerator, real_fake_head_for
from pretrainer.objectives.heads import PretrainingModel
from pretrainer.objectives.mlm import evaluation_batches
from pretrainer.registry import OBJECTIVES

EVAL_SEED = 4321  # the held-out z is the same at every evaluation
GENERATOR = "gan_generator."


@OBJECTIVES.register("dcgan")
class DCGAN(PretrainingObjective):
    batch_layout = "images"
    modality = "image"
    adversarial = True  # its loss need not fall (the registry contracts hold it to its own)
    optimizer_groups = ("discriminator", "generator")  # stepped in this order each fit step

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        super().__init__(cfg, data)
        self.layout_options = {"augment": False}  # the generator must match the images as they are

    def check_backbone(self, backbone: nn.Module) -> str | None:
        return image_backbone_refusal(backbone, "DCGAN's discriminator reads images",
                                      "use an image backbone, e.g. model.name = \"resnet\", with data.name = \"images\"")

    def build(self, backbone: nn.Module) -> PretrainingModel:
        generator = DCGANGenerator(backbone, self.cfg.latent_dim, self.cfg.generator_width)
        # PretrainingModel re-draws only Linear weights, with N(0, init_std = 0.02): DCGAN's rule too.
        return PretrainingModel(backbone, {"gan_generator": generator, "gan_real_fake": real_fake_head_for(backbone)})

    def group_parameters(self, module: nn.Module) -> dict[str, list]:
        named = list(module.named_parameters())
        return {"discriminator": [(n, p) for n, p in named if not n.startswith(GENERATOR)],
                "generator": [(n, p) for n, p in named if n.startswith(GENERATOR)]}

    def discriminate(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> real-vs-fake logits (B,)."""
        return model.gan_real_fake(model.pooled(model(images), None, "mean")).squeeze(-1).float()

    def sample(self, model: nn.Module, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(model.parameters()).device
        z = torch.randn(n, model.gan_generator.latent_dim, generator=generator, device=device)
        return model.gan_generator(z)

    def losses(self, model: nn.Module, real: torch.Tensor, fake: torch.Tensor, group: str | None) -> dict:
        out = {}
        if group in (None, "discriminator"):
            # Real and fake images in separate passes (the backbone's norms see one kind at a time).
            d_real, d_fake = self.discriminate(model, real), self.discriminate(model, fake.detach())
            out["d_loss"] = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            out["d_real_acc"] = (d_real > 0).float().mean().detach()
            out["d_fake_acc"] = (d_fake < 0).float().mean().detach()
        if group in (None, "generator"):
            out["g_loss"] = F.softplus(-self.discriminate(model, fake)).mean()  # non-saturating: -log D(G(z))
        return out

    def __call__(self, model: nn.Module, batch: dict, group: str | None = None) -> dict:
        """One group's loss (`group` from `optimizer_groups`); both summed when none is named."""
        real = batch["images"]
        out = self.losses(model, real, self.sample(model, real.shape[0]), group)
        loss = out.get("d_loss", 0.0) + out.get("g_loss", 0.0)
        metrics = {k: v.detach() for k, v in out.items()}
        return {"loss": loss, **metrics, "n_tokens": int(real.shape[0])}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        sums: dict[str, float] = {}
        real_pixels = fake_pixels = 0.0
        count = 0
        generator = None
        for batch in evaluation_batches(model, batches):
            real = batch["images"]
            if generator is None:
                generator = torch.Generator(device=real.device).manual_seed(EVAL_SEED)
            fake = self.sample(model, real.shape[0], generator)
            n = real.shape[0]
            for key, value in self.losses(model, real, fake, None).items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            real_pixels += float(real.float().mean()) * n
            fake_pixels += float(fake.float().mean()) * n
            count += n
        count = max(count, 1)
        metrics = {k: v / count for k, v in sums.items()}
        metrics["d_acc"] = (metrics["d_real_acc"] + metrics["d_fake_acc"]) / 2  # 0.5: chance
        metrics["pixel_mean_gap"] = abs(real_pixels - fake_pixels) / count
        return metrics
