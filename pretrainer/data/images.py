"""The images data module (`[data] name = "images"`): unlabeled images from .npz files or image
folders, made one size and channel count, cached once as memory-mapped uint8 arrays; batches in
the layouts image objectives name.

Prepared folder (under <cache>/images/<sha256 of the data config, the seed and the files' bytes>):

    train.npy   (N, C, S, S) uint8, memory-mapped at training time
    eval.npy    (M, C, S, S) uint8: `data.eval`, or `data.holdout` of the images drawn with the seed
    meta.json   counts, shape, sources

Layouts (S = image size, C = channels, float32 in [0, 1]):
- "images": {"images": (B, C, S, S)}; augmented (data/augment.py) only when the objective passes
  the layout option augment = True.
- "views":  {"images": (B, C, S, S), "images2": (B, C, S, S)}: two independent augmentations of
  the same images (contrastive objectives).
`seq_len` is ignored. Training batches are infinite, rank-aware and resume-exact (the
EpochSampler of data/loader.py, plus a torch.Generator seeded per batch from (seed, epoch,
position, rank) for the augmentations); held-out batches are the same every time (un-augmented
for "images", augmented with a fixed seed for "views").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from pretrainer.io import build_cache_once
from pretrainer.config import Config, DataConfig, resolve_section
from pretrainer.data.augment import Augmentation
from pretrainer.data.image_config import ImageDataConfig
from pretrainer.data.image_files import ImageSet, read_images
from pretrainer.data.image_processor import ImageProcessor, has_processor
from pretrainer.data.loader import EpochSampler, SamplerLoader, seed_words
from pretrainer.data.sources import cache_root
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.registry import DATA

IMAGE_FORMAT = 1  # bump when the prepared layout changes, so old caches are not reused
LAYOUTS = ("images", "views")
DRAW_AUGMENT = 7  # what the per-batch generator is for (data/loader.py keeps 0..2 for its draws)
EVAL_SEED = 20240602  # held-out views are augmented the same way every time
# [data] keys that change batches, not the prepared arrays: left out of the cache key.
AUGMENT_KEYS = ("crop_scale", "rotate", "flip", "jitter", "blur")


def torch_generator(*values: int) -> torch.Generator:
    """A torch.Generator seeded from integers (through numpy's SeedSequence: well-mixed seeds)."""
    seed = int(np.random.SeedSequence(seed_words(*values)).generate_state(1, np.uint64)[0]) % 2**63
    return torch.Generator().manual_seed(seed)


@DATA.register("images")
class ImageData:
    """Read, convert and cache images once (by content); describe them; cut batches."""

    config_class = ImageDataConfig
    layouts = LAYOUTS
    modality = "image"

    def __init__(self, cfg: Config):
        self.cfg = dataclasses.replace(cfg, data=resolve_section(DataConfig, cfg.data))
        self.augmentation = Augmentation.of(self.cfg.data)
        self.train: np.ndarray | None = None
        self.eval: np.ndarray | None = None
        self.cache_dir: Path | None = None
        self.meta: dict = {}

    @staticmethod
    def inherit(cfg: Config, folder: str | Path) -> Config:
        """`cfg` reading images the way the run in `folder` was trained to: its size and channels,
        unless data.image_size / data.channels say otherwise."""
        if not has_processor(folder):
            return cfg
        processor = ImageProcessor.load(folder)
        data = resolve_section(DataConfig, cfg.data)
        return dataclasses.replace(cfg, data=dataclasses.replace(
            data, image_size=data.image_size or processor.image_size, channels=data.channels or processor.channels))

    @classmethod
    def example(cls, root: str | Path, n: int = 64, size: int = 12) -> dict:
        """A small generated data set (bright squares of random size and place on a dark field,
        something to learn) under `root` and the [data] section reading it: the registry
        contract tests' data."""
        rng = np.random.default_rng(0)
        images = np.zeros((n, size, size), dtype=np.uint8)
        for image in images:
            side = int(rng.integers(3, size // 2 + 2))
            top, left = rng.integers(0, size - side, size=2)
            image[top:top + side, left:left + side] = 255
        path = Path(root) / "images.npz"
        np.savez(path, images=images)
        return {"name": "images", "train": [str(path)], "holdout": 0.1, "cache_dir": str(Path(root) / "cache")}

    def prepare(self, log: Callable[[str], None] = print) -> ImageData:
        data = self.cfg.data
        if not data.train:
            raise PretrainerError("config key 'data.train' is empty: name at least one .npz file or image folder")
        for path in [*data.train, *data.eval]:
            if not Path(path).exists():
                raise PretrainerError(f"{path}: file not found")
        images_dir = cache_root(data.cache_dir or None) / "images"
        final = images_dir / cache_key(self.cfg)
        if not build_cache_once(final, lambda building: _build(self.cfg, building, log)):
            log(f"using cached images at {final}")
        try:
            self.meta = json.loads((final / "meta.json").read_text())
            self.train = np.load(final / "train.npy", mmap_mode="r")
            self.eval = np.load(final / "eval.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise PretrainerError(f"{final}: damaged prepared images ({e}); delete the folder to prepare "
                                  f"again") from None
        self.cache_dir = final
        return self

    @property
    def prepared(self) -> np.ndarray:
        if self.train is None:
            raise RuntimeError("call prepare() first")
        return self.train

    @property
    def processor(self) -> ImageProcessor:
        _, channels, size, _ = self.prepared.shape
        return ImageProcessor(image_size=size, channels=channels)

    @property
    def info(self) -> DataInfo:
        return DataInfo(modality="image", image_size=self.processor.image_size, channels=self.processor.channels)

    @property
    def has_heldout(self) -> bool:
        self.prepared
        return len(self.eval) > 0

    def summary(self) -> str:
        _, c, s, _ = self.prepared.shape
        return (f"prepared {len(self.train):,} train / {len(self.eval):,} held-out images, {s}x{s}, {c} channel"
                f"{'s' if c > 1 else ''} -> {self.cache_dir}")

    def check_layout(self, layout: str, objective: str) -> None:
        if layout not in self.layouts:
            raise PretrainerError(f"objective {objective!r} needs {layout!r} batches, which data.name = \"images\" "
                                  f"cannot build (it builds: {', '.join(self.layouts)})")

    def train_batches(self, layout: str, batch_size: int, seq_len: int = 0, *, seed: int, rank: int = 0,
                      world_size: int = 1, augment: bool = False, **options) -> ImageLoader:
        """Infinite, resumable, rank-aware batches; `augment` augments the "images" layout."""
        self.check_layout(layout, "?")
        return ImageLoader(self.prepared, batch_size, layout, self.augmentation, seed=seed, rank=rank,
                           world_size=world_size, augment=augment)

    def eval_batches(self, layout: str, batch_size: int, seq_len: int = 0, max_batches: int = 0,
                     augment: bool = False, **options) -> Iterator[dict[str, torch.Tensor]]:
        """Held-out batches in order, the same every time: "images" plain, "views" augmented with a
        fixed seed per batch."""
        self.check_layout(layout, "?")
        held = self.eval
        n_batches = -(-len(held) // batch_size)
        if max_batches > 0:
            n_batches = min(n_batches, max_batches)
        for b in range(n_batches):
            images = ImageProcessor.to_float(held[b * batch_size:(b + 1) * batch_size])
            if layout == "views":
                generator = torch_generator(EVAL_SEED, b)
                yield {"images": self.augmentation(images, generator), "images2": self.augmentation(images, generator)}
            else:
                yield {"images": images}

    def save(self, run_dir: str | Path) -> None:
        """What a run needs to read new images the same way: image_processor.json."""
        self.processor.save(Path(run_dir))


class ImageLoader(SamplerLoader):
    """Infinite, resumable, rank-aware image batches (see the module doc for the layouts)."""

    def __init__(self, images: np.ndarray, batch_size: int, layout: str, augmentation: Augmentation,
                 seed: int = 0, rank: int = 0, world_size: int = 1, augment: bool = False):
        self.images, self.layout, self.augmentation = images, layout, augmentation
        self.augment = augment or layout == "views"
        self.sampler = EpochSampler(len(images), batch_size, seed, rank, world_size)
        if self.sampler.batches_per_epoch == 0:
            raise PretrainerError(f"the training images are too few: {len(images):,} images, fewer than "
                                  f"train.batch_size = {batch_size}"
                                  + (f" x {world_size} processes" if world_size > 1 else ""))
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.tokens_per_batch = batch_size  # what the throughput counts: images
        self.batches_per_epoch = self.sampler.batches_per_epoch

    def __next__(self) -> dict[str, torch.Tensor]:
        picked = self.sampler.next_indices()
        images = ImageProcessor.to_float(self.images[picked])  # (B, C, S, S)
        if not self.augment:
            return {"images": images}
        generator = torch_generator(self.seed, self.sampler.epoch, self.sampler.position, self.rank, DRAW_AUGMENT)
        first = self.augmentation(images, generator)
        if self.layout == "views":
            return {"images": first, "images2": self.augmentation(images, generator)}
        return {"images": first}


def cache_key(cfg: Config) -> str:
    """SHA-256 over what determines the prepared arrays: the [data] keys that read and convert,
    the seed (the hold-out draw) and the bytes of every input file."""
    data = dataclasses.asdict(cfg.data)
    for key in ("cache_dir", "name", *AUGMENT_KEYS):
        data.pop(key)
    h = hashlib.sha256(json.dumps({"format": IMAGE_FORMAT, "data": data, "seed": cfg.run.seed},
                                  sort_keys=True).encode())
    for source in [*cfg.data.train, *cfg.data.eval]:
        for path in _files_of(Path(source)):
            h.update(str(path.relative_to(source) if Path(source).is_dir() else path.name).encode())
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


def _files_of(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file())
    return [source]


def _read_all(sources: list[str], data: ImageDataConfig) -> tuple[np.ndarray, list[ImageSet]]:
    """Every source read and made one shape; sources that disagree are an error naming the odd one."""
    sets = []
    for source in sources:
        found = read_images(source, data.images_key, labeled=False, channels=data.channels, size=data.image_size)
        if data.max_images:
            found.images = found.images[:data.max_images]
        if sets and found.images.shape[1:] != sets[0].images.shape[1:]:
            c, s = found.images.shape[1], found.images.shape[2]
            c0, s0 = sets[0].images.shape[1], sets[0].images.shape[2]
            raise PretrainerError(f"{found.source}: {s}x{s} images with {c} channels, but {sets[0].source} has "
                                  f"{s0}x{s0} with {c0}; set data.image_size and data.channels to convert all")
        sets.append(found)
    return (np.concatenate([s.images for s in sets]) if sets else np.zeros((0, 1, 1, 1), np.uint8)), sets


def _build(cfg: Config, out: Path, log: Callable[[str], None]) -> None:
    data = cfg.data
    train, sets = _read_all(data.train, data)
    if data.eval:
        held, held_sets = _read_all(data.eval, data)
        if held.shape[1:] != train.shape[1:]:
            raise PretrainerError(f"{data.eval[0]}: held-out images of shape {held.shape[1:]}, training images "
                                  f"{train.shape[1:]}; set data.image_size and data.channels to convert both")
        sets += held_sets
    else:
        chosen = choose_holdout(len(train), data.holdout, cfg.run.seed)
        train, held = train[~chosen], train[chosen]
    skipped = sum(s.skipped_files for s in sets)
    if skipped:
        log(f"passed over {skipped:,} files that are not images (by extension)")
    np.save(out / "train.npy", train)
    np.save(out / "eval.npy", held)
    meta = {"format": IMAGE_FORMAT, "train_images": len(train), "eval_images": len(held),
            "shape": list(train.shape[1:]), "sources": [s.source for s in sets], "skipped_files": skipped}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def choose_holdout(n: int, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: a seeded random `fraction` of the images, at least one when there are two or more."""
    held = np.zeros(n, dtype=bool)
    if fraction <= 0 or n < 2:
        return held
    k = min(n - 1, max(1, round(fraction * n)))
    held[np.random.default_rng(seed_words(seed, n)).choice(n, size=k, replace=False)] = True
    return held
