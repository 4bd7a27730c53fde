"""DCGAN's generator and the discriminator's real/fake head: objective heads (left behind at
transfer); the discriminator's body is the registry image backbone, which is what transfers."""

from __future__ import annotations

import torch
import torch.nn as nn


def upsamplings(image_size: int) -> int:
    """How many stride-2 transposed convolutions take a small start grid (4 to 7 pixels) to
    `image_size`: 28 -> 2 (7, 14, 28), 32 -> 3 (4, 8, 16, 32); an odd size starts at full size."""
    n, size = 0, image_size
    while size % 2 == 0 and size // 2 >= 4:
        size //= 2
        n += 1
    return n


class DCGANGenerator(nn.Module):
    """Radford et al. (2015): z (B, latent_dim) -> a linear projection to a `width`-channel grid
    of image_size / 2^k pixels -> k blocks of (4x4 stride-2 transposed convolution halving the
    channels, BatchNorm, ReLU) -> a 3x3 convolution to the image's channels -> sigmoid (images in
    [0, 1], as the backbone reads them; the paper's tanh is for [-1, 1] pixels)."""

    def __init__(self, backbone: nn.Module, latent_dim: int = 100, width: int = 128):
        super().__init__()
        cfg = backbone.config
        self.sizes = {"latent_dim": latent_dim, "width": width}
        self.latent_dim = latent_dim
        k = upsamplings(cfg.image_size)
        self.start = (width, cfg.image_size >> k, cfg.image_size >> k)
        self.project = nn.Sequential(nn.Linear(latent_dim, width * self.start[1] * self.start[2], bias=False))
        self.project_norm = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU())
        blocks, channels = [], width
        for _ in range(k):
            out = max(channels // 2, 8)
            blocks += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.to_pixels = nn.Conv2d(channels, cfg.channels, 3, padding=1)
        for m in self.modules():  # the paper's N(0, 0.02) for every weight, BatchNorm gains N(1, 0.02)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def head_config(self) -> dict[str, int]:
        return dict(self.sizes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, C, S, S) in [0, 1]."""
        x = self.project_norm(self.project(z).view(-1, *self.start))
        return torch.sigmoid(self.to_pixels(self.blocks(x)))


def real_fake_head_for(backbone: nn.Module) -> nn.Linear:
    """The discriminator's output: one real-vs-fake logit from the backbone's pooled features."""
    return nn.Linear(backbone.d_model, 1)
