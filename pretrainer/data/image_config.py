"""The config of the images data module: which files hold the unlabeled images, how they are
made one size and channel count, and the augmentations an objective may ask for."""

from __future__ import annotations

from dataclasses import dataclass

from pretrainer.config import DataConfig, _field, between, fraction, invalid, non_negative


@dataclass
class ImageDataConfig(DataConfig):
    """Unlabeled images for pre-training (`[data] name = "images"`)."""

    name: str = _field("images", "data module from the data registry (what the data is and how it is read)")
    train: list[str] = _field([], "image sources: .npz files (an array (N, H, W) or (N, H, W, C), uint8) or image "
                                  "folders (flat, or one sub-folder per class; labels are not read)")
    eval: list[str] = _field([], "held-out sources; empty -> split `holdout` of the images off train")
    images_key: str = _field("", "npz: the images array (default: the first of x_train, images present)")
    channels: int = _field(0, "convert every image to 1 (gray) or 3 (RGB) channels (0 = as stored; a mix of "
                              "grayscale and colour is then an error)", (0, 1, 3))
    image_size: int = _field(0, "resize every image to image_size x image_size (shorter side, then the centre "
                                "square; 0 = as stored: all images must be square and one size)",
                             check=non_negative)
    holdout: float = _field(0.02, "fraction of images held out for evaluation when `eval` is empty",
                            check=between(0, 1, high_open=True))
    max_images: int = _field(0, "read at most this many images per source (0 = all)", check=non_negative)
    # Augmentations, applied only when the objective asks (layout option augment = True, or the
    # "views" layout); drawn from (seed, epoch, position, rank), so resume is exact.
    crop_scale: list[float] = _field([0.5, 1.0], "augment: random resized crop, [min, max] fraction of the "
                                                 "image area kept (aspect ratio in [3/4, 4/3]); [1.0, 1.0] = no crop",
                                     check=between(0, 1, low_open=True))
    rotate: float = _field(15.0, "augment: random rotation by up to this many degrees either way (0 = none)",
                           check=between(0, 180))
    flip: bool = _field(False, "augment: random horizontal flip (off by default: a flipped digit or letter is "
                               "another symbol)")
    jitter: float = _field(0.4, "augment: colour jitter strength s (brightness, contrast, saturation 0.8 s, hue "
                                "0.2 s; applied with probability 0.8, as SimCLR); colour images only (0 = none)",
                           check=between(0, 1))
    blur: float = _field(0.0, "augment: probability of a Gaussian blur (sigma in [0.1, 2] pixels, kernel a tenth "
                              "of the image)", check=fraction)

    def check(self) -> None:
        if len(self.crop_scale) != 2:
            invalid("crop_scale", f"= {self.crop_scale} must be two numbers [min, max]")
        if self.crop_scale[0] > self.crop_scale[1]:
            invalid("crop_scale", f"= {self.crop_scale}: min is above max")

