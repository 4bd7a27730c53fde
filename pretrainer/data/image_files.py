"""Read images from `.npz` arrays or image folders into uint8 arrays (N, C, H, W).

Sources:
- an `.npz` file: an images array (N, H, W) grayscale or (N, H, W, C) with C in {1, 3, 4},
  uint8; which key is read is chosen by the caller (`data.images_key`; default the first of
  `x_train` / `images` present), and labels come from a second key for labeled use;
- IDX files (MNIST / Fashion-MNIST, data/idx.py): an `*-images-idx3-ubyte[.gz]` file (labels from
  its `-labels-idx1-` sibling), or a folder of the four (split x_train / x_test by images key);
- an image folder (Pillow): a flat folder of images, or one sub-folder per class (the
  sub-folder's name is the label). Files whose extension is not an image's are passed over and
  counted; hidden files are ignored.

Shapes and channels must agree unless the caller asks for conversion: `channels` converts every
image (luminance for colour -> gray, repeated gray -> colour, alpha dropped); `size` resizes every
image (shorter side to `size`, then the centre square). Without them, a grayscale / colour / alpha
mix or a second size is a one-line error naming the first odd file, and so is a corrupt image, an
empty class folder, a missing npz key (listing the keys present) or an array of another dtype.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pretrainer.data.idx import is_idx_file, is_idx_folder, read_idx_split
from pretrainer.errors import PretrainerError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
DEFAULT_IMAGE_KEYS = ("x_train", "images")
DEFAULT_LABEL_KEYS = {"x_train": "y_train", "images": "labels"}
CHANNEL_NAMES = {1: "grayscale", 2: "grayscale+alpha", 3: "RGB", 4: "RGBA"}
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's convert("L")


@dataclass
class ImageSet:
    """Images of one source: `images` uint8 (N, C, H, W); labels (label names as strings) when read
    labeled; `names[i]` says where image i came from (a file; None for an npz array)."""

    images: np.ndarray
    labels: list[str] | None
    source: str
    names: list[str] | None = None
    skipped_files: int = 0

    def __len__(self) -> int:
        return len(self.images)

    def where(self, i: int) -> str:
        return self.names[i] if self.names else f"{self.source}[{i}]"


def is_npz(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".npz"


def read_images(path: str | Path, images_key: str = "", labels_key: str = "", labeled: bool = False,
                channels: int = 0, size: int = 0) -> ImageSet:
    """One source (an .npz file or an image folder) as an ImageSet, converted to `channels` and
    resized to `size` when those are set (0: keep, and refuse a mix)."""
    path = Path(path)
    if not path.exists():
        raise PretrainerError(f"{path}: file not found")
    if is_idx_folder(path) or is_idx_file(path):
        found = _read_idx(path, images_key, labeled, channels, size)
    elif path.is_dir():
        found = _read_folder(path, labeled, channels, size)
    elif is_npz(path):
        found = _read_npz(path, images_key, labels_key, labeled, channels, size)
    else:
        raise PretrainerError(f"{path}: not an .npz file or an image folder")
    if not len(found):
        raise PretrainerError(f"{path}: no images")
    return found


def npz_keys(path: Path, images_key: str, labels_key: str, labeled: bool) -> tuple[str, str]:
    """The keys read from an npz: the images (given, else the first of x_train / images present)
    and, when labeled, the labels (given, else y_train / labels matching the images key)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            present = list(archive.files)
    except (OSError, ValueError) as e:
        raise PretrainerError(f"{path}: not a readable .npz file ({str(e).splitlines()[0] if str(e) else e})") from None
    listed = ", ".join(present) or "none"
    if images_key:
        if images_key not in present:
            raise PretrainerError(f"{path}: no array {images_key!r} (the file holds: {listed})")
    else:
        images_key = next((k for k in DEFAULT_IMAGE_KEYS if k in present), "")
        if not images_key:
            raise PretrainerError(f"{path}: no array 'x_train' or 'images' (the file holds: {listed}); name the "
                                  f"images array with data.images_key")
    if not labeled:
        return images_key, ""
    if not labels_key:
        labels_key = DEFAULT_LABEL_KEYS.get(images_key, "")
        if images_key.startswith("x_"):
            labels_key = "y_" + images_key[2:]
    if labels_key not in present:
        raise PretrainerError(f"{path}: no labels array {labels_key or '(none named)'!r} for images "
                              f"{images_key!r} (the file holds: {listed})")
    return images_key, labels_key


def _read_npz(path: Path, images_key: str, labels_key: str, labeled: bool, channels: int, size: int) -> ImageSet:
    images_key, labels_key = npz_keys(path, images_key, labels_key, labeled)
    with np.load(path, allow_pickle=False) as archive:
        try:
            images = archive[images_key]
            labels = archive[labels_key] if labeled else None
        except ValueError as e:  # an object array needs pickle, which is never allowed
            raise PretrainerError(f"{path}: cannot read array ({str(e).splitlines()[0]})") from None
    where = f"{path}[{images_key}]"
    if images.dtype != np.uint8:
        raise PretrainerError(f"{where}: images must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    elif images.ndim == 4 and images.shape[-1] in (1, 3, 4):
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (N, C, H, W)
    else:
        raise PretrainerError(f"{where}: images must be (N, H, W) or (N, H, W, C) with C = 1, 3 or 4; "
                              f"got shape {images.shape}")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != len(images):
            raise PretrainerError(f"{path}[{labels_key}]: labels must be one per image ({len(images)}), "
                                  f"got shape {labels.shape}")
        labels = [str(v) for v in labels.tolist()]
    return ImageSet(conform(images, channels, size, where), labels, where)


def _read_idx(path: Path, images_key: str, labeled: bool, channels: int, size: int) -> ImageSet:
    images, labels, where = read_idx_split(path, images_key, labeled)
    images = images[:, None]  # (N, 1, H, W): IDX images are grayscale
    return ImageSet(np.ascontiguousarray(conform(images, channels, size, where)),
                    [str(v) for v in labels.tolist()] if labeled else None, where)


def conform(images: np.ndarray, channels: int, size: int, where: str) -> np.ndarray:
    """(N, C, H, W) images to the asked channel count and size; without a size they must be square."""
    if channels:
        images = convert_channels(images, channels)
    if size:
        images = fit_size(images, size)
    elif images.shape[2] != images.shape[3]:
        raise PretrainerError(f"{where}: images are {images.shape[3]}x{images.shape[2]}, not square; set "
                              f"data.image_size to resize them (shorter side, then the centre square)")
    return images


def _image_files(folder: Path) -> tuple[list[Path], int]:
    """Image files directly in `folder` (sorted) and how many other files were passed over."""
    files, skipped = [], 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            files.append(Path(entry.path))
        else:
            skipped += 1
    return files, skipped


def folder_files(folder: Path, labeled: bool) -> tuple[list[Path], list[str], int]:
    """(image files, their class folder names, other files passed over) of a flat folder or one
    with a sub-folder per class; labeled reading needs the class folders."""
    top, skipped = _image_files(folder)
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labeled and not classes:
        raise PretrainerError(f"{folder}: a labeled image folder needs one sub-folder per class (no sub-folders)")
    if labeled and top:
        raise PretrainerError(f"{top[0]}: an image outside the class folders of {folder}")
    files, labels = list(top), []
    for class_dir in classes:
        inside, other = _image_files(class_dir)
        skipped += other
        if not inside:
            raise PretrainerError(f"{class_dir}: empty class folder (no image files)")
        files += inside
        labels += [class_dir.name] * len(inside)
    return files, labels, skipped


def _read_folder(folder: Path, labeled: bool, channels: int, size: int) -> ImageSet:
    files, labels, skipped = folder_files(folder, labeled)
    arrays = [_decode(path, channels) for path in files]
    if not channels:
        first = arrays[0].shape[0] if arrays else 0
        for path, array in zip(files, arrays):
            if array.shape[0] != first:
                raise PretrainerError(f"{path}: {CHANNEL_NAMES[array.shape[0]]} image among "
                                      f"{CHANNEL_NAMES[first]} ones (first: {files[0]}); set data.channels = 1 "
                                      f"or 3 to convert them all")
    if size:
        arrays = [fit_size(a[None], size)[0] for a in arrays]
    else:
        shape = arrays[0].shape[1:] if arrays else (0, 0)
        for path, array in zip(files, arrays):
            if array.shape[1:] != shape:
                raise PretrainerError(f"{path}: {array.shape[2]}x{array.shape[1]} image among {shape[1]}x{shape[0]} "
                                      f"ones (first: {files[0]}); set data.image_size to resize them all")
            if array.shape[1] != array.shape[2]:
                raise PretrainerError(f"{path}: a {array.shape[2]}x{array.shape[1]} image is not square; set "
                                      f"data.image_size to resize (shorter side, then the centre square)")
    images = np.stack(arrays) if arrays else np.zeros((0, channels or 1, size, size), dtype=np.uint8)
    return ImageSet(images, labels if labeled else None, str(folder), [str(f) for f in files], skipped)


def _decode(path: Path, channels: int) -> np.ndarray:
    """One image file -> (C, H, W) uint8; `channels` (when set) converts it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            mode = image.mode
            if mode == "P":  # a palette: its colours, with alpha when the palette has transparency
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif mode in ("1", "I", "I;16", "I;16B", "F"):
                image = image.convert("L")
            elif mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK, YCbCr, ...
                image = image.convert("RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise PretrainerError(f"{path}: not a readable image ({reason})") from None
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    return convert_channels(array[None], channels)[0] if channels else np.ascontiguousarray(array)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, channels, H, W): colour to gray by luminance, gray repeated to
    colour, alpha dropped (2 = gray + alpha counts as gray)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have in (2, 4):  # drop alpha
        images, have = images[:, :have - 1], have - 1
    if have == channels:
        return np.ascontiguousarray(images)
    if channels == 1:  # (N, 3, H, W) -> (N, 1, H, W)
        gray = np.tensordot(images.astype(np.float32), LUMINANCE, axes=([1], [0]))
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[:, None]
    if channels == 3 and have == 1:
        return np.repeat(images, 3, axis=1)
    raise PretrainerError(f"cannot convert {have}-channel images to {channels} channels")


def fit_size(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, C, size, size): the centre square of the shorter side, resized
    (bilinear, antialiased when shrinking). Images already that size are returned as they are."""
    n, c, h, w = images.shape
    if h == w == size:
        return images
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = images[:, :, top:top + side, left:left + side]
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for start in range(0, n, chunk):
        part = torch.from_numpy(np.ascontiguousarray(square[start:start + chunk])).float()
        resized = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=size < side)
        out[start:start + chunk] = resized.round().clamp(0, 255).to(torch.uint8).numpy()
    return out
