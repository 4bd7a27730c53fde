"""Files that are never half-written, and weights that are never unpickled.

Every file pretrainer writes goes through here: `atomic_write_*` and
`write_folder_atomically` build under a temporary name and rename into place, so a reader
(or a crash) sees the old content or the new, never a mix. Weights are safetensors only;
a tied tensor (an LM head sharing the embedding matrix) is stored once and its other
names are kept in the file's metadata.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pretrainer.errors import PretrainerError

TIED_KEY = "pretrainer.tied"  # safetensors metadata: JSON {dropped name: stored name}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile / `distributed.ObjectiveStep` wrappers."""
    while True:
        if (isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
                or getattr(model, "is_module_wrapper", False)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


# ---------------------------------------------------------------- atomic files


def fsync_path(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """`rows` (dicts with the same keys, in column order) as a CSV file with a header line."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


# ---------------------------------------------------------------- model weights


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP's leading `module.` and torch.compile's `_orig_mod.` from foreign state dicts."""
    out = {".".join(p for p in k.split(".") if p != "_orig_mod"): v for k, v in state.items()}
    while out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def model_tensors(model: nn.Module | dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The unwrapped model's state dict (or the given one) with each shared tensor once.

    safetensors refuses tensors that share memory, so a tied weight (e.g. the LM head
    reusing the embedding matrix) is stored under its first name and the other names are
    returned as aliases. A tensor that is a different view of shared memory is copied.
    """
    state = _strip_wrapper_prefixes(model if isinstance(model, dict) else unwrap(model).state_dict())
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_by_identity: dict[tuple, str] = {}
    seen_storages: set[tuple] = set()
    for name, t in state.items():
        if not torch.is_tensor(t):
            continue
        t = t.detach()
        if t.numel() == 0:
            tensors[name] = t.clone()
            continue
        storage = (t.device, t.untyped_storage().data_ptr())
        identity = (storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if identity in first_by_identity:
            aliases[name] = first_by_identity[identity]
            continue
        first_by_identity[identity] = name
        shares_memory = storage in seen_storages
        seen_storages.add(storage)
        tensors[name] = t.clone() if shares_memory else t.contiguous()
    return tensors, aliases


# What a full disk looks like: no space, a quota reached, or a file-size limit (RLIMIT_FSIZE).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """`save_file` and fsync; a failed write is an OSError with its errno, as Python's own writes give.

    safetensors writes in Rust and reports an I/O error as a SafetensorError whose message
    ends in `(os error N)`; turning it back into OSError(N) lets callers tell a full disk
    from a bug.
    """
    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as e:
        found = re.search(r"\(os error (\d+)\)", str(e))
        if isinstance(e, OSError) or not found:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None
    fsync_file(path)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on CPU) and the metadata of a safetensors file; errors name the file."""
    if not path.is_file():
        raise PretrainerError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a bad header
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise PretrainerError(f"{path}: not a readable safetensors file ({reason})") from None
    return tensors, metadata


def read_model_state(path: Path) -> dict[str, torch.Tensor]:
    tensors, metadata = read_safetensors(path)
    try:
        aliases = json.loads(metadata.get(TIED_KEY, "{}"))
    except json.JSONDecodeError:
        raise PretrainerError(f"{path}: corrupt tied-weight metadata") from None
    for alias, stored in aliases.items():
        if stored not in tensors:
            raise PretrainerError(f"{path}: tied weight {alias!r} refers to missing {stored!r}")
        tensors[alias] = tensors[stored]
    return _strip_wrapper_prefixes(tensors)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, strict: bool):
    try:
        return unwrap(model).load_state_dict(state, strict=strict)
    except RuntimeError as e:
        # torch lists every mismatch over many lines; the first few are enough to act on.
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise PretrainerError(f"{path}: weights do not fit this model: {detail[:300]}") from None


def save_weights(model: nn.Module | dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write the unwrapped model's weights (or a full state dict) to `path` atomically, with
    optional string `metadata` stored in the same file (so weights and facts about them can never
    disagree after a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, aliases = model_tensors(model)
    tmp = _tmp_name(path)
    try:
        write_safetensors(tmp, tensors, {**(metadata or {}), "format": "pt", TIED_KEY: json.dumps(aliases)})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True):
    """Load a weight file written by `save_weights` (tied weights are re-tied).

    Returns torch's (missing_keys, unexpected_keys); with `strict` a mismatch is an error.
    """
    path = Path(path)
    return load_model_state(model, read_model_state(path), path, strict)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PretrainerError(f"{path}: file not found (is {path.parent} a Hugging Face model folder?)") from None
    except (NotADirectoryError, IsADirectoryError):
        raise PretrainerError(f"{path}: not a file (is {path.parent} a Hugging Face model folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretrainerError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise PretrainerError(f"{path}: expected a JSON object")
    return data


def write_folder_atomically(target: Path, write: Callable[[Path], None], overwrite: bool) -> None:
    """Build the folder under a hidden temporary name beside `target`, then rename it into place.

    An existing non-empty `target` is refused unless `overwrite`; then it is swapped out and
    removed only after the new folder is in place.
    """
    if target.is_file():
        raise PretrainerError(f"{target}: is a file, not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise PretrainerError(f"{target}: already exists and is not empty; choose another folder "
                              f"or overwrite it (--overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                fsync_path(path)
        fsync_path(tmp)
        if target.is_dir() and any(target.iterdir()):
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)  # replaces an empty folder on POSIX
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(target.parent)


def build_cache_once(final: Path, build: Callable[[Path], None]) -> bool:
    """Build a cache folder (done when it holds meta.json, written last) under a temporary name
    beside `final`, then rename it into place. Returns False when it was already built. Processes
    racing on the same key are fine: the first rename wins and the others' identical builds go."""
    if (final / "meta.json").is_file():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{final.name[:16]}-", dir=final.parent))
    try:
        build(building)
        if final.exists() and not (final / "meta.json").is_file():
            shutil.rmtree(final)  # an unfinished folder left by hand or an older version, never a finished build
        try:
            os.rename(building, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise  # else another process finished the same build first
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return True


def sha256_of_files(paths: Iterable[str | os.PathLike]) -> str:
    """One SHA-256 over the bytes of `paths`, in order, read 1 MiB at a time."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
