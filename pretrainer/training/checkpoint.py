"""Crash-safe checkpoints and weight files, in safetensors and JSON only (never pickle).

Layout of one checkpoint (`run_dir/checkpoints/step_000200/`):
  model.safetensors      the unwrapped model's state dict; a tied weight is stored once
                         and its other names are listed in the file's metadata
  optimizer.safetensors  optimizer state tensors as `state.<param index>.<name>`, the RNG
                         states as `rng.*`, and any tensors inside `extra_state` as `extra.*`
  state.json             step, optimizer param-group hyperparameters, numpy / python RNG
                         states, and `extra_state` (schedule, data loader position, ...)

A checkpoint is built in a hidden temporary folder, renamed into place, and only then is
`checkpoints/latest` (a text file naming the folder) replaced; older checkpoints are
removed only after that. A crash at any point (tests/faults kills the process inside
each of these stages) leaves `latest` naming a complete checkpoint, and a failed write
(a full disk) leaves the previous one in place and is reported as a one-line error
naming it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pretrainer.errors import PretrainerError
from pretrainer.io import (TIED_KEY, atomic_write_text, fsync_file, fsync_path, is_disk_full, load_model_state,
                          model_tensors, read_model_state, read_safetensors, write_safetensors)

FORMAT = "pretrainer-checkpoint/1"


# ---------------------------------------------------------------- JSON with tensors


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """Make `obj` JSON-able; tensors go to `tensors` under `extra.<n>` and leave a reference."""
    if torch.is_tensor(obj):
        key = f"extra.{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint state {where}: keys must be strings, got {k!r}")
            out[k] = _encode(v, tensors, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state {where}: cannot store {type(obj).__name__} in JSON")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__ndarray__", "dtype"}:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


# ---------------------------------------------------------------- RNG


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Torch (CPU and CUDA) RNG states as uint8 tensors; numpy and python states as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return tensors, {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                     "python": [version, list(internal), gauss_next]}


def set_rng_state(tensors: dict[str, torch.Tensor], states: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ---------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """A checkpoint read back into memory (model tensors on CPU, tied names re-filled)."""

    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict  # in torch's `Optimizer.state_dict()` format
    extra: dict = field(default_factory=dict)
    rng_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    rng_states: dict = field(default_factory=dict)


def _step_of(folder: Path) -> int | None:
    name = folder.name
    if folder.is_dir() and name.startswith("step_") and name[5:].isdigit():
        return int(name[5:])
    return None


def _prune(ckpt_dir: Path, keep: int, current: int) -> None:
    """Keep the newest `keep` checkpoints up to `current` (0 = keep all).

    Folders with a larger step than `current` are left over from a run that crashed after
    writing them and was resumed from an earlier checkpoint; they belong to an abandoned
    timeline and are removed.
    """
    steps = sorted((s, p) for p in ckpt_dir.iterdir() if (s := _step_of(p)) is not None)
    stale = [p for s, p in steps if s > current]
    older = [p for s, p in steps if s <= current]
    if keep > 0:
        stale += older[:-keep]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: nn.Module | dict,
                    optimizer: torch.optim.Optimizer | dict | None, extra_state: dict | None = None,
                    keep: int = 2) -> Path:
    """Write `run_dir/checkpoints/step_<step>/` atomically and point `latest` at it.

    `model` and `optimizer` may be given as their (full, gathered) state dicts instead.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    name = f"step_{step:06d}"
    tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}"
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for leftover in ckpt_dir.glob(".tmp-*"):  # from a save that was killed midway
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in ckpt_dir.glob(".latest.tmp-*"):  # `latest` half-written by a killed process
            leftover.unlink(missing_ok=True)
        _write_checkpoint(ckpt_dir, tmp, name, step, model, optimizer, extra_state)
        atomic_write_text(ckpt_dir / "latest", name + "\n")
    except OSError as e:
        raise PretrainerError(_write_failed(e, ckpt_dir / name, step)) from None
    _prune(ckpt_dir, keep, step)
    return ckpt_dir / name


def _write_failed(e: OSError, target: Path, step: int) -> str:
    """One line: the checkpoint that could not be written, why, and the one a resume would use."""
    what = "disk full" if is_disk_full(e) else "write failed"
    detail = e.strerror or str(e)
    if e.filename:
        detail += f", writing {Path(e.filename).name}"
    return (f"{target}: {what} while saving the checkpoint of step {step} ({detail}); "
            f"{last_good_checkpoint(target.parent.parent)}")


def last_good_checkpoint(run_dir: str | os.PathLike) -> str:
    """A clause for error messages: which checkpoint a `--resume` would continue from."""
    try:
        path = latest_checkpoint_path(run_dir)
    except (PretrainerError, OSError):
        path = None
    if path is None or not path.is_dir():
        return f"there is no checkpoint in {Path(run_dir) / 'checkpoints'} to resume from"
    return f"the last good checkpoint is {path} (continue from it with --resume)"


def _write_checkpoint(ckpt_dir: Path, tmp: Path, name: str, step: int, model, optimizer, extra_state) -> None:
    tmp.mkdir()
    try:
        tensors, aliases = model_tensors(model)
        write_safetensors(tmp / "model.safetensors", tensors, {"format": "pt", TIED_KEY: json.dumps(aliases)})

        state_tensors, rng_json = rng_state()
        opt = (optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
               if optimizer is not None else {"state": {}, "param_groups": []})
        scalars = {}
        for idx, param_state in opt["state"].items():
            for key, value in param_state.items():
                if torch.is_tensor(value):
                    state_tensors[f"state.{idx}.{key}"] = value.detach().contiguous()
                else:
                    scalars[f"{idx}.{key}"] = value
        extra = _encode(extra_state or {}, state_tensors, "extra_state")
        write_safetensors(tmp / "optimizer.safetensors", state_tensors, {"format": "pt"})

        state = {"format": FORMAT, "step": int(step),
                 "optimizer": {"param_groups": _encode(opt["param_groups"], {}, "param_groups"),
                               "scalars": _encode(scalars, {}, "optimizer state")},
                 "rng": rng_json, "extra": extra}
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
        fsync_file(tmp / "state.json")
        fsync_path(tmp)

        final = ckpt_dir / name
        if final.exists():  # an orphan of a crashed run (never `latest` while we run)
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(ckpt_dir)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read one checkpoint folder; a missing or damaged file is a one-line error naming it."""
    path = Path(path)
    if not path.is_dir():
        raise PretrainerError(f"{path}: checkpoint folder not found")
    state_path = path / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("format") != FORMAT:
            raise ValueError(f"unknown format {state.get('format')!r}")
    except FileNotFoundError:
        raise PretrainerError(f"{state_path}: file not found") from None
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise PretrainerError(f"{state_path}: corrupt checkpoint state ({e})") from None
    model_state = read_model_state(path / "model.safetensors")
    tensors, _ = read_safetensors(path / "optimizer.safetensors")

    try:
        opt_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("state."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = value
        for key, value in state["optimizer"]["scalars"].items():
            idx, name = key.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = value
        groups = state["optimizer"]["param_groups"]
        for g in groups:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
        return Checkpoint(
            path=path, step=int(state["step"]), model_state=model_state,
            optimizer_state={"state": opt_state, "param_groups": groups},
            extra=_decode(state["extra"], tensors),
            rng_tensors={k: v for k, v in tensors.items() if k.startswith("rng.")},
            rng_states=state["rng"])
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise PretrainerError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None


def latest_checkpoint_path(run_dir: str | os.PathLike) -> Path | None:
    """The folder `checkpoints/latest` names, or None when there is no checkpoint."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        return None
    name = latest.read_text(encoding="utf-8").strip()
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise PretrainerError(f"{latest}: does not name a checkpoint folder (found {name!r})")
    return ckpt_dir / name


def load_latest_checkpoint(run_dir: str | os.PathLike) -> Checkpoint | None:
    path = latest_checkpoint_path(run_dir)
    return None if path is None else load_checkpoint(path)


def restore(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
            *, rng: bool = True) -> dict:
    """Put the checkpoint's weights, optimizer state and RNG states back; return `extra_state`.

    The caller restores what lives in `extra_state` (schedule, data loader position) itself.
    """
    load_model_state(model, checkpoint.model_state, checkpoint.path / "model.safetensors", strict=True)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        except (ValueError, KeyError) as e:
            raise PretrainerError(f"{checkpoint.path}: optimizer state does not fit this model ({e})") from None
    if rng:
        set_rng_state(checkpoint.rng_tensors, checkpoint.rng_states)
    return checkpoint.extra
