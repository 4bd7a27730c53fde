"""What an image run needs to read new images the same way: the tokenizer's counterpart.

An image run's folder holds `image_processor.json` (size, channels, value range) where a text
run's holds tokenizer.json; `load_processor(folder)` gives whichever of the two the folder has,
so the commands that read a run (fine-tuning from it, evaluating it) need not know the modality.

Models take float images (B, C, S, S) in [0, 1] (the pre-training batch layout "images"): no
mean / std normalisation is applied, the backbones normalise inside (GroupNorm after the stem).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pretrainer.data.image_files import convert_channels, fit_size
from pretrainer.data.tokenizer import TextTokenizer, load_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_text

PROCESSOR_FILE = "image_processor.json"


@dataclass(frozen=True)
class ImageProcessor:
    image_size: int
    channels: int
    kind = "image"  # as TextTokenizer.kind, for messages

    def save(self, folder: str | os.PathLike) -> None:
        atomic_write_text(Path(folder) / PROCESSOR_FILE,
                          json.dumps({"image_size": self.image_size, "channels": self.channels, "range": [0, 1]},
                                     indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImageProcessor:
        path = Path(path)
        path = path / PROCESSOR_FILE if path.is_dir() else path
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            processor = cls(image_size=int(spec["image_size"]), channels=int(spec["channels"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PretrainerError(f"{path}: not a readable image processor ({type(e).__name__}: {e})") from None
        if processor.image_size <= 0 or processor.channels not in (1, 2, 3, 4):
            raise PretrainerError(f"{path}: image_size must be > 0 and channels 1 to 4")
        return processor

    def fit(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) of any size and channel count -> (N, channels, image_size, image_size)."""
        return fit_size(convert_channels(images, self.channels), self.image_size)

    @staticmethod
    def to_float(images: np.ndarray) -> torch.Tensor:
        """uint8 (B, C, S, S) -> float32 in [0, 1]."""
        return torch.from_numpy(np.array(images, dtype=np.float32)).div_(255)  # a copy: memmaps are read-only


def has_processor(folder: str | os.PathLike) -> bool:
    return (Path(folder) / PROCESSOR_FILE).is_file()


def load_processor(folder: str | os.PathLike) -> TextTokenizer | ImageProcessor:
    """How a run folder reads its inputs: its image processor, else its tokenizer."""
    if has_processor(folder):
        return ImageProcessor.load(folder)
    return load_tokenizer(folder)
