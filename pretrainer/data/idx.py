"""IDX files (the MNIST / Fashion-MNIST format), plain or gzipped, and folders of them.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order. Only unsigned bytes (type 0x08)
are read: images (N, H, W) in an `*-images-idx3-ubyte[.gz]` file, labels (N,) in its
`*-labels-idx1-ubyte[.gz]` sibling.

A folder holding `train-images-idx3-ubyte[.gz]` (and the other three files of the MNIST layout,
as the Debian package `dataset-fashion-mnist` installs under /usr/share/datasets/fashion-mnist)
is a data set with two splits: `train` and `test` (the files' prefix `t10k`). Callers name a split
by the npz-style images key: x_train / x_test.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from pretrainer.errors import PretrainerError

UBYTE = 0x08
SPLIT_PREFIXES = {"train": "train", "test": "t10k"}
IDX_NAME = re.compile(r"-(images|labels)-idx[13]-ubyte(\.gz)?$")


def is_idx_file(path: str | Path) -> bool:
    return bool(IDX_NAME.search(Path(path).name))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def is_idx_folder(path: str | Path) -> bool:
    """A folder with the MNIST layout's training images (plain or gzipped)."""
    return Path(path).is_dir() and _find(Path(path), "train-images-idx3-ubyte") is not None


def split_files(folder: Path, images_key: str = "") -> tuple[Path, Path]:
    """(images file, labels file) of split `images_key` (x_train, the default, or x_test)."""
    split = (images_key or "x_train").removeprefix("x_")
    if split not in SPLIT_PREFIXES:
        raise PretrainerError(f"{folder}: an IDX folder has the splits train and test, not {split!r} "
                              f"(name them folder#train / folder#test)")
    prefix = SPLIT_PREFIXES[split]
    images = _find(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        missing = f"{prefix}-{'images-idx3' if images is None else 'labels-idx1'}-ubyte[.gz]"
        raise PretrainerError(f"{folder}: IDX folder without {missing} (split {split!r})")
    return images, labels


def labels_file_of(images_file: Path) -> Path:
    """The labels file beside an images file (`*-images-idx3-ubyte.gz` -> `*-labels-idx1-ubyte.gz`)."""
    sibling = images_file.with_name(images_file.name.replace("-images-idx3-", "-labels-idx1-"))
    if not sibling.is_file():
        raise PretrainerError(f"{images_file}: no labels file beside it ({sibling.name})")
    return sibling


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file with `ndim` dimensions; a short, damaged or other-typed file
    is a one-line error naming it."""
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise PretrainerError(f"{path}: not a readable IDX file ({reason})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise PretrainerError(f"{path}: not an IDX file (its first bytes are not an IDX magic number)")
    dtype, dims = raw[2], raw[3]
    if dtype != UBYTE:
        raise PretrainerError(f"{path}: IDX values of type 0x{dtype:02x}; only unsigned bytes (0x08) are read")
    if dims != ndim:
        raise PretrainerError(f"{path}: an IDX file of {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise PretrainerError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise PretrainerError(f"{path}: truncated or padded IDX file: shape {tuple(shape)} needs {expected:,} bytes "
                              f"of values, the file has {len(raw) - header:,}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_split(source: Path, images_key: str = "",
                   labeled: bool = False) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(images (N, H, W), labels (N,) or None, where) of an IDX folder's split or an images file."""
    if source.is_dir():
        images_file, labels_file = split_files(source, images_key)
    else:
        images_file = source
        labels_file = labels_file_of(source) if labeled else None
    images = read_idx(images_file, 3)
    labels = None
    if labeled:
        labels = read_idx(labels_file, 1)
        if len(labels) != len(images):
            raise PretrainerError(f"{labels_file}: {len(labels):,} labels for the {len(images):,} images of "
                                  f"{images_file.name}")
    return images, labels, str(images_file)
