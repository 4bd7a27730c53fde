"""Labeled images for fine-tuning: where a split's images and labels are, the encoded split, and
its resumable batches.

A split is named by a path: an image folder with one sub-folder per class, or an .npz file, where
`#NAME` after the path picks the arrays `x_NAME` / `y_NAME` (`mnist.npz#test`), and `#IMAGES,LABELS`
names both keys (`data.npz#pixels,digits`); a bare .npz path reads x_train / y_train (or images /
labels). An IDX folder (data/idx.py; the MNIST / Fashion-MNIST layout) reads as an .npz does:
`fashion-mnist#test` is its t10k files, a bare folder its train files; an `*-images-idx3-ubyte.gz`
file reads with its labels sibling. Labels are read first (the label set is known before any image is decoded); the images
are read when the split is encoded, converted to the model's channels and size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pretrainer.data.idx import is_idx_file, is_idx_folder, labels_file_of, read_idx, split_files
from pretrainer.data.image_files import folder_files, is_npz, npz_keys, read_images
from pretrainer.data.image_processor import ImageProcessor
from pretrainer.data.loader import EpochSampler, SamplerLoader
from pretrainer.errors import PretrainerError


@dataclass
class LabeledImages:
    """A labeled split before decoding: its source, keys and label names (one per image)."""

    path: str
    images_key: str
    labels_key: str
    labels: list[str]
    keep: list[int] | None = None  # a sample of the images (max_eval_examples), in order

    @property
    def source(self) -> str:
        return f"{self.path}[{self.images_key}]" if self.images_key else self.path

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, i: int) -> str:
        return f"{self.source}, image {i}"

    def select(self, indices: Sequence[int]) -> LabeledImages:
        chosen = [self.keep[i] for i in indices] if self.keep is not None else list(indices)
        return LabeledImages(self.path, self.images_key, self.labels_key, [self.labels[i] for i in indices], chosen)


def split_spec(spec: str) -> tuple[str, str, str]:
    """"file.npz#test" -> (file.npz, x_test, y_test); "file.npz#a,b" -> (file.npz, a, b);
    a plain path -> (path, "", "") (the defaults)."""
    path, _, fragment = spec.partition("#")
    if not fragment:
        return path, "", ""
    if "," in fragment:
        images_key, _, labels_key = fragment.partition(",")
        return path, images_key.strip(), labels_key.strip()
    return path, f"x_{fragment}", f"y_{fragment}"


def read_labeled_images(spec: str) -> LabeledImages:
    """The labels of one split (see the module doc for `spec`); images are read by `encode_images`."""
    path, images_key, labels_key = split_spec(spec)
    if not Path(path).exists():
        raise PretrainerError(f"{path}: file not found")
    if is_idx_folder(path) or is_idx_file(path):
        labels_file = split_files(Path(path), images_key)[1] if Path(path).is_dir() else labels_file_of(Path(path))
        return LabeledImages(path, images_key, "", [str(v) for v in read_idx(labels_file, 1).tolist()])
    if Path(path).is_dir():
        if images_key:
            raise PretrainerError(f"{spec}: '#' picks arrays of an .npz file; {path} is a folder")
        files, labels, _ = folder_files(Path(path), labeled=True)
        if not files:
            raise PretrainerError(f"{path}: no images")
        return LabeledImages(path, "", "", labels)
    if not is_npz(path):
        raise PretrainerError(f"{path}: not an .npz file or an image folder")
    images_key, labels_key = npz_keys(Path(path), images_key, labels_key, labeled=True)
    with np.load(path, allow_pickle=False) as archive:
        labels = archive[labels_key]
    if labels.ndim != 1:
        raise PretrainerError(f"{path}[{labels_key}]: labels must be one per image, got shape {labels.shape}")
    return LabeledImages(path, images_key, labels_key, [str(v) for v in labels.tolist()])


@dataclass
class ImageDataset:
    """Encoded labeled images: uint8 (N, C, S, S) in the model's size, and label indices."""

    images: np.ndarray
    labels: list[int]
    label_names: list[str]
    teacher_logits: torch.Tensor | None = None  # (N, K): a teacher's logits (task-specific distillation)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        index = np.asarray(list(indices), dtype=np.int64)
        batch = {"images": ImageProcessor.to_float(self.images[index]),
                 "labels": torch.as_tensor([self.labels[i] for i in index], dtype=torch.long)}
        if self.teacher_logits is not None:
            batch["teacher_logits"] = self.teacher_logits[torch.from_numpy(index)]
        return batch

    def content_key(self) -> bytes:
        """What identifies the inputs (a probe's feature cache key)."""
        return np.ascontiguousarray(self.images).tobytes()


def encode_images(split: LabeledImages, processor: ImageProcessor, label_index: list[int],
                  label_names: list[str]) -> ImageDataset:
    """Decode a split's images in the processor's channels and size."""
    found = read_images(split.path, split.images_key, split.labels_key, labeled=True,
                        channels=processor.channels, size=processor.image_size)
    images = found.images if split.keep is None else found.images[np.asarray(split.keep, dtype=np.int64)]
    return ImageDataset(np.ascontiguousarray(images), label_index, list(label_names))


class ImageClassificationLoader(SamplerLoader):
    """Infinite, resumable, rank-aware batches over `indices` of an ImageDataset (shuffled per epoch;
    the last batch of an epoch may be smaller)."""

    def __init__(self, dataset: ImageDataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.indices = np.asarray(indices if indices is not None else range(len(dataset)), dtype=np.int64)
        self.sampler = EpochSampler(len(self.indices), batch_size, seed, rank, world_size, shuffle=shuffle,
                                    drop_last=False)
        if self.sampler.batches_per_epoch == 0:
            raise PretrainerError(f"no training images to batch ({len(self.indices)} images"
                                  + (f" for {world_size} processes)" if world_size > 1 else ")"))
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.tokens_per_batch = batch_size  # the throughput counts images

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.dataset.batch(self.indices[self.sampler.next_indices()].tolist())
