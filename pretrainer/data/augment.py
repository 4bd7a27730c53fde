"""Image augmentations for views and augmented batches, drawn from an explicit torch.Generator.

Random resized crop, rotation and horizontal flip are one affine map per image (a single
`kornia.geometry.transform.warp_affine` call for the batch); colour jitter (colour images only)
and Gaussian blur follow with kornia's functional ops. Every random number comes from the
`generator` argument, never from torch's global generator: a loader seeds one per batch from
(seed, epoch, position, rank), so the same batch gets the same augmentation after a resume, and
the training thread's own draws (dropout) neither disturb nor are disturbed by a loader running
in a background thread.

kornia rather than torchvision: torchvision from PyPI does not import beside the pinned CPU torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from kornia.enhance import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import warp_affine

JITTER_PROBABILITY = 0.8  # SimCLR's
ASPECT_RATIO = (3 / 4, 4 / 3)
BLUR_SIGMA = (0.1, 2.0)


@dataclass(frozen=True)
class Augmentation:
    crop_scale: tuple[float, float] = (0.5, 1.0)
    rotate: float = 15.0  # degrees, either way
    flip: bool = False
    jitter: float = 0.0
    blur: float = 0.0

    @classmethod
    def of(cls, data_cfg) -> Augmentation:
        """The augmentation the [data] section describes."""
        return cls(crop_scale=tuple(data_cfg.crop_scale), rotate=data_cfg.rotate, flip=data_cfg.flip,
                   jitter=data_cfg.jitter, blur=data_cfg.blur)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images (B, C, S, S) float in [0, 1] -> augmented (B, C, S, S) in [0, 1]."""
        x = self.geometric(images, generator)
        if self.jitter > 0 and x.shape[1] == 3:
            x = self.colour_jitter(x, generator)
        if self.blur > 0:
            x = self.gaussian_blur(x, generator)
        return x.clamp(0, 1)

    def geometric(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Crop (a random area fraction and aspect ratio, at a random place), rotation and flip as
        one affine map per image from output pixels to input pixels, applied by warp_affine."""
        B, _, H, W = images.shape
        u = torch.rand(B, 6, generator=generator)  # one row of draws per image, fixed order
        low, high = self.crop_scale
        area = low + (high - low) * u[:, 0]
        log_ratio = math.log(ASPECT_RATIO[0]) + (math.log(ASPECT_RATIO[1]) - math.log(ASPECT_RATIO[0])) * u[:, 1]
        ratio = torch.exp(log_ratio)
        crop_w = (torch.sqrt(area * ratio) * W).clamp(max=W)  # (B,) in pixels
        crop_h = (torch.sqrt(area / ratio) * H).clamp(max=H)
        centre_x = crop_w / 2 + (W - crop_w) * u[:, 2]
        centre_y = crop_h / 2 + (H - crop_h) * u[:, 3]
        angle = (2 * u[:, 4] - 1) * math.radians(self.rotate)
        flip = torch.where((u[:, 5] < 0.5) & self.flip, -1.0, 1.0)
        # output pixel p -> input pixel: centre + R(angle) diag(flip * crop_w / W, crop_h / H) (p - c)
        sx, sy = flip * crop_w / W, crop_h / H
        cos, sin = torch.cos(angle), torch.sin(angle)
        to_input = torch.zeros(B, 3, 3)
        to_input[:, 0, 0], to_input[:, 0, 1] = cos * sx, -sin * sy
        to_input[:, 1, 0], to_input[:, 1, 1] = sin * sx, cos * sy
        cx, cy = (W - 1) / 2, (H - 1) / 2
        to_input[:, 0, 2] = centre_x - 0.5 - (to_input[:, 0, 0] * cx + to_input[:, 0, 1] * cy)
        to_input[:, 1, 2] = centre_y - 0.5 - (to_input[:, 1, 0] * cx + to_input[:, 1, 1] * cy)
        to_input[:, 2, 2] = 1
        to_output = torch.linalg.inv(to_input)[:, :2]  # warp_affine takes the map from input to output
        return warp_affine(images, to_output.to(images.dtype), (H, W), mode="bilinear", padding_mode="zeros",
                           align_corners=True)

    def colour_jitter(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation (each by up to 0.8 s) and hue (up to 0.2 s of the
        circle), on a random JITTER_PROBABILITY of the images."""
        B = images.shape[0]
        u = torch.rand(B, 5, generator=generator)
        s = self.jitter
        x = adjust_brightness(images, (2 * u[:, 0] - 1) * 0.8 * s)
        x = adjust_contrast(x, 1 + (2 * u[:, 1] - 1) * 0.8 * s)
        x = adjust_saturation(x, 1 + (2 * u[:, 2] - 1) * 0.8 * s)
        x = adjust_hue(x, (2 * u[:, 3] - 1) * 0.2 * s * 2 * math.pi)
        chosen = (u[:, 4] < JITTER_PROBABILITY)[:, None, None, None]
        return torch.where(chosen, x, images)

    def gaussian_blur(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A Gaussian blur of random sigma on a random `blur` fraction of the images."""
        B, _, H, _ = images.shape
        u = torch.rand(B, 2, generator=generator)
        sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, 0]
        kernel = max(3, (H // 10) | 1)  # odd, about a tenth of the image
        blurred = gaussian_blur2d(images, (kernel, kernel), torch.stack([sigma, sigma], dim=1).to(images.dtype))
        chosen = (u[:, 1] < self.blur)[:, None, None, None]
        return torch.where(chosen, blurred, images)
