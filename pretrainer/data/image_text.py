"""The image–text pairs data module (`[data] name = "image_text"`): images with one caption each,
for CLIP-style pre-training.

Sources are `.npz` files holding an images array (N, H, W[, C]) uint8 and a captions array (N,)
of strings (`data.captions_key`, default "captions"); a captions count that differs from the
images count is a one-line error naming the file. Images are read and converted as the
"images" module reads them (data/image_files.py).

The held-out split is by content: an image goes to held-out when the SHA-256 of its pixel bytes,
read as a number in [0, 1), is below `data.holdout`; so identical images (the Openclipart set
repeats about 1,300 of its 8,118) always land on the same side and a held-out image is never
seen in training, whatever the seed or the order of the files. Held-out keeps one pair per
distinct image (the first), so retrieval has one right answer per query image.

Captions are tokenized with the run's tokenizer: [tokenizer] trained on the training captions,
or loaded from tokenizer.path (an init run's, or MiniLM's; objective.text_init sets it).

Prepared folder (under <cache>/image_text/<sha256 of the data config, tokenizer config and files>):

    train.npy / eval.npy                    (N, C, S, S) uint8, memory-mapped at training time
    train_captions.json / eval_captions.json  the captions, one per image
    eval_sources.json                       for each held-out pair, its file and index there
    tokenizer.json                          the captions' tokenizer
    meta.json

Layout "image_text": {"images": (B, C, S, S) float in [0, 1] (augmented when the objective asks:
layout option augment = True), "input_ids": (B, T) int64, "attention_mask": (B, T)}: each caption
as [CLS] pieces [SEP], cut to seq_len (its [SEP] kept), padded to the longest in the batch.
Training batches are infinite, rank-aware and resume-exact (EpochSampler, per-batch generator
from (seed, epoch, position, rank)); held-out batches are plain images, the same every time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from pretrainer.io import build_cache_once
from pretrainer.config import Config, _field, between, invalid
from pretrainer.data.augment import Augmentation
from pretrainer.data.image_config import ImageDataConfig
from pretrainer.data.image_files import is_npz, read_images
from pretrainer.data.image_processor import ImageProcessor
from pretrainer.data.images import AUGMENT_KEYS, DRAW_AUGMENT, ImageData, ImageLoader, torch_generator
from pretrainer.data.sources import cache_root
from pretrainer.data.text import text_info
from pretrainer.data.tokenizer import TextTokenizer, load_tokenizer, tokenizer_file, train_tokenizer
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.registry import DATA

IMAGE_TEXT_FORMAT = 1


@dataclass
class ImageTextDataConfig(ImageDataConfig):
    """Image–caption pairs for CLIP (`[data] name = "image_text"`)."""

    name: str = _field("image_text", "data module from the data registry (what the data is and how it is read)")
    train: list[str] = _field([], "image–caption sources: .npz files with an images array (N, H, W[, C]) uint8 "
                                  "and a captions array (N,) of strings")
    eval: list[str] = _field([], "held-out sources; empty -> the images whose content hash falls below "
                                 "`holdout` (duplicates never straddle the split)")
    captions_key: str = _field("captions", "npz: the captions array, one string per image")
    holdout: float = _field(0.15, "fraction of distinct images held out (chosen by the hash of their pixels, "
                                  "not the seed)", check=between(0, 1, high_open=True))
    categories: str = _field("", "evaluation: a JSON-lines file, one line per image of the first train source, "
                                 "with a \"category\" (its part before the first / is the class), for "
                                 "zero-shot classification of the held-out images")
    zero_shot: list[str] = _field([], "evaluation: more .npz sets (images + captions) whose captions are class "
                                      "names, for zero-shot classification among all their names (e.g. emoji)")

    def check(self) -> None:
        super().check()
        for key in ("train", "eval", "zero_shot"):
            for i, path in enumerate(getattr(self, key)):
                if not is_npz(path):
                    invalid(f"{key}[{i}]", f"= {path!r} is not an .npz file (image–text pairs are read from .npz "
                                           f"files holding images and captions)")


def read_captions(path: str | Path, key: str, n_images: int) -> list[str]:
    """The captions array of an .npz, one string per image; one-line errors naming the file."""
    with np.load(path, allow_pickle=False) as archive:
        if key not in archive.files:
            raise PretrainerError(f"{path}: no captions array {key!r} (the file holds: "
                                  f"{', '.join(archive.files) or 'none'}); name it with data.captions_key")
        try:
            captions = archive[key]
        except ValueError as e:  # an object array needs pickle, which is never allowed
            raise PretrainerError(f"{path}[{key}]: cannot read array ({str(e).splitlines()[0]})") from None
    if captions.ndim != 1 or captions.dtype.kind not in "US":
        raise PretrainerError(f"{path}[{key}]: captions must be a 1-D array of strings, got shape "
                              f"{captions.shape} dtype {captions.dtype}")
    if len(captions) != n_images:
        raise PretrainerError(f"{path}: {len(captions):,} captions for {n_images:,} images; give one caption "
                              f"per image")
    return [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in captions.tolist()]


def content_fraction(images: np.ndarray) -> np.ndarray:
    """(N,) float in [0, 1): each image's SHA-256 of its bytes read as a fraction; equal images,
    equal numbers."""
    out = np.empty(len(images))
    for i, image in enumerate(images):
        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return out


def split_by_content(images: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): held out where the content fraction is below `fraction`,
    and of equal images only the first held out (training never sees any of them)."""
    held = content_fraction(images) < fraction
    train = np.flatnonzero(~held)
    seen, first = set(), []
    for i in np.flatnonzero(held):
        key = hashlib.sha256(np.ascontiguousarray(images[i]).tobytes()).digest()
        if key not in seen:
            seen.add(key)
            first.append(i)
    return train, np.array(first, dtype=np.int64)


def read_pairs(path: str, data: ImageTextDataConfig) -> tuple[np.ndarray, list[str], object]:
    found = read_images(path, data.images_key, labeled=False, channels=data.channels, size=data.image_size)
    captions = read_captions(path, data.captions_key, len(found.images))
    if data.max_images:
        found.images, captions = found.images[:data.max_images], captions[:data.max_images]
    return found.images, captions, found


@DATA.register("image_text")
class ImageTextData(ImageData):
    """Read images and captions once, tokenizer trained or loaded, cached by content; cut batches."""

    config_class = ImageTextDataConfig
    layouts = ("image_text",)
    modality = "image"  # what the backbone (the image encoder) reads; the captions go to the objective's tower

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.train_captions: list[str] = []
        self.eval_captions: list[str] = []
        self.eval_sources: list[list] = []
        self.tokenizer: TextTokenizer | None = None

    @classmethod
    def example(cls, root: str | Path, n: int = 64, size: int = 12) -> dict:
        """Generated pairs that a tiny model links within a few dozen steps: noise (so every image is
        distinct) with its left half, its top half or nothing lit, captioned by that word. An edge's
        orientation survives the backbones' normalisations and a ViT's patches (the halves cut through
        a patch); the registry contract tests' data."""
        rng = np.random.default_rng(0)
        r, c = np.indices((size, size))
        lit = {"left": c < size // 2, "top": r < size // 2, "plain": np.zeros((size, size), dtype=bool)}
        words = list(lit)
        kinds = np.arange(n) % len(words)
        images = rng.integers(0, 32, size=(n, size, size)).astype(np.uint8)
        for image, kind in zip(images, kinds):
            image[lit[words[kind]]] = 255
        captions = [f"a field lit {words[kind]}" for kind in kinds]
        path = Path(root) / "pairs.npz"
        np.savez(path, images=images, captions=np.array(captions))
        return {"name": "image_text", "train": [str(path)], "holdout": 0.2, "cache_dir": str(Path(root) / "cache")}

    @staticmethod
    def inherit(cfg: Config, folder: str | Path) -> Config:
        """The run's image size and channels (as "images"), and its captions' tokenizer."""
        cfg = ImageData.inherit(cfg, folder)
        if cfg.tokenizer.path or not (Path(folder) / "tokenizer.json").is_file():
            return cfg
        return dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, path=str(tokenizer_file(folder))))

    def prepare(self, log: Callable[[str], None] = print) -> ImageTextData:
        data = self.cfg.data
        if not data.train:
            raise PretrainerError("config key 'data.train' is empty: name at least one .npz file of images and "
                                  "captions")
        for path in [*data.train, *data.eval, *data.zero_shot, *([data.categories] if data.categories else [])]:
            if not Path(path).exists():
                raise PretrainerError(f"{path}: file not found")
        root = cache_root(data.cache_dir or None) / "image_text"
        final = root / pairs_cache_key(self.cfg)
        if not build_cache_once(final, lambda building: _build_pairs(self.cfg, building, log)):
            log(f"using cached image–text pairs at {final}")
        try:
            self.meta = json.loads((final / "meta.json").read_text())
            self.train = np.load(final / "train.npy", mmap_mode="r")
            self.eval = np.load(final / "eval.npy", mmap_mode="r")
            self.train_captions = json.loads((final / "train_captions.json").read_text(encoding="utf-8"))
            self.eval_captions = json.loads((final / "eval_captions.json").read_text(encoding="utf-8"))
            self.eval_sources = json.loads((final / "eval_sources.json").read_text())
            self.tokenizer = load_tokenizer(final / "tokenizer.json")
        except (OSError, ValueError) as e:
            raise PretrainerError(f"{final}: damaged prepared pairs ({e}); delete the folder to prepare again") from None
        self.cache_dir = final
        return self

    @property
    def info(self) -> DataInfo:
        text = text_info(self.tokenizer)
        return dataclasses.replace(text, modality="image", image_size=self.processor.image_size,
                                   channels=self.processor.channels)

    def summary(self) -> str:
        _, c, s, _ = self.prepared.shape
        return (f"prepared {len(self.train):,} train / {len(self.eval):,} held-out image–caption pairs, {s}x{s}, "
                f"{c} channel{'s' if c > 1 else ''}, captions {self.tokenizer.kind} vocab "
                f"{self.tokenizer.vocab_size:,} -> {self.cache_dir}")

    def check_layout(self, layout: str, objective: str) -> None:
        if layout not in self.layouts:
            raise PretrainerError(f"objective {objective!r} needs {layout!r} batches, which data.name = "
                                  f"\"image_text\" cannot build (it builds: {', '.join(self.layouts)})")

    def encode(self, captions: list[str], seq_len: int) -> dict[str, torch.Tensor]:
        return encode_captions(self.tokenizer, captions, seq_len)

    def train_batches(self, layout: str, batch_size: int, seq_len: int = 0, *, seed: int, rank: int = 0,
                      world_size: int = 1, augment: bool = False, **options) -> PairLoader:
        self.check_layout(layout, "?")
        return PairLoader(self.prepared, self.train_captions, self.tokenizer, batch_size, seq_len,
                          self.augmentation, seed=seed, rank=rank, world_size=world_size, augment=augment)

    def eval_batches(self, layout: str, batch_size: int, seq_len: int = 0, max_batches: int = 0,
                     **options) -> Iterator[dict[str, torch.Tensor]]:
        """Held-out pairs in order, plain images; max_batches is ignored (retrieval needs them all)."""
        self.check_layout(layout, "?")
        for start in range(0, len(self.eval), batch_size):
            yield {"images": ImageProcessor.to_float(self.eval[start:start + batch_size]),
                   **self.encode(self.eval_captions[start:start + batch_size], seq_len or 64)}

    def save(self, run_dir: str | Path) -> None:
        """image_processor.json (how the image encoder reads) and tokenizer.json (the captions')."""
        self.processor.save(Path(run_dir))
        self.tokenizer.save(Path(run_dir))


def encode_captions(tokenizer: TextTokenizer, captions: list[str], seq_len: int) -> dict[str, torch.Tensor]:
    """[CLS] pieces [SEP] per caption, cut to seq_len (the [SEP] kept), right-padded to the longest."""
    rows = []
    for ids in tokenizer.encode_batch(list(captions)):
        rows.append([tokenizer.cls_id, *ids[:max(0, seq_len - 2)], tokenizer.sep_id])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


class PairLoader(ImageLoader):
    """ImageLoader's images (and its resume-exact state) with each image's caption, tokenized."""

    def __init__(self, images: np.ndarray, captions: list[str], tokenizer: TextTokenizer, batch_size: int,
                 seq_len: int, augmentation: Augmentation, seed: int = 0, rank: int = 0, world_size: int = 1,
                 augment: bool = False):
        super().__init__(images, batch_size, "images", augmentation, seed=seed, rank=rank, world_size=world_size,
                         augment=augment)
        self.captions, self.tokenizer, self.seq_len = captions, tokenizer, seq_len

    def __next__(self) -> dict[str, torch.Tensor]:
        picked = self.sampler.next_indices()
        images = ImageProcessor.to_float(self.images[picked])
        if self.augment:
            generator = torch_generator(self.seed, self.sampler.epoch, self.sampler.position, self.rank,
                                        DRAW_AUGMENT)
            images = self.augmentation(images, generator)
        return {"images": images, **encode_captions(self.tokenizer, [self.captions[i] for i in picked],
                                                    self.seq_len)}


def pairs_cache_key(cfg: Config) -> str:
    """SHA-256 over what determines the prepared folder: the reading keys of [data], [tokenizer]
    (and the bytes of tokenizer.path), and every input file's bytes. Not the seed: the split is
    by content."""
    data = dataclasses.asdict(cfg.data)
    for key in ("cache_dir", "name", "categories", "zero_shot", *AUGMENT_KEYS):
        data.pop(key)
    h = hashlib.sha256(json.dumps({"format": IMAGE_TEXT_FORMAT, "data": data,
                                   "tokenizer": dataclasses.asdict(cfg.tokenizer)}, sort_keys=True).encode())
    files = [*cfg.data.train, *cfg.data.eval] + ([str(tokenizer_file(cfg.tokenizer.path))] if cfg.tokenizer.path else [])
    for path in files:
        h.update(Path(path).name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _read_all_pairs(sources: list[str], data: ImageTextDataConfig):
    images, captions, where = [], [], []
    for source in sources:
        found_images, found_captions, found = read_pairs(source, data)
        if images and found_images.shape[1:] != images[0].shape[1:]:
            raise PretrainerError(f"{found.source}: images of shape {found_images.shape[1:]}, but {sources[0]} has "
                                  f"{images[0].shape[1:]}; set data.image_size and data.channels to convert all")
        images.append(found_images)
        captions += found_captions
        where += [[source, i] for i in range(len(found_images))]
    return np.concatenate(images), captions, where


def _build_pairs(cfg: Config, out: Path, log: Callable[[str], None]) -> None:
    data = cfg.data
    images, captions, where = _read_all_pairs(data.train, data)
    if data.eval:
        held, held_captions, held_where = _read_all_pairs(data.eval, data)
        train = images
        train_captions = captions
    else:
        train_idx, held_idx = split_by_content(images, data.holdout)
        train, held = images[train_idx], images[held_idx]
        train_captions = [captions[i] for i in train_idx]
        held_captions = [captions[i] for i in held_idx]
        held_where = [where[i] for i in held_idx]
    if cfg.tokenizer.path:
        tokenizer = load_tokenizer(cfg.tokenizer.path, cfg.tokenizer.lowercase)
    else:
        tokenizer = train_tokenizer(iter(train_captions), cfg.tokenizer)
    np.save(out / "train.npy", train)
    np.save(out / "eval.npy", held)
    (out / "train_captions.json").write_text(json.dumps(train_captions, ensure_ascii=False), encoding="utf-8")
    (out / "eval_captions.json").write_text(json.dumps(held_captions, ensure_ascii=False), encoding="utf-8")
    (out / "eval_sources.json").write_text(json.dumps(held_where))
    tokenizer.save(out)
    first = sum(1 for source, _ in where if source == data.train[0])
    meta = {"format": IMAGE_TEXT_FORMAT, "train_pairs": len(train), "eval_pairs": len(held),
            "first_source_images": first,
            "shape": list(train.shape[1:]), "sources": list(data.train), "eval": list(data.eval),
            "split": "data.eval" if data.eval else f"sha256 of the pixels < {data.holdout}"}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))

