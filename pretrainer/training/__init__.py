"""Training: the loop, optimizer, schedule, checkpoints, logging, precision."""

from pretrainer.io import atomic_write_bytes, atomic_write_text, load_weights, save_weights, unwrap
from pretrainer.training.checkpoint import (Checkpoint, load_checkpoint, load_latest_checkpoint, restore,
                                            save_checkpoint)
from pretrainer.training.loop import FitResult, fit, is_main_process, train_step
from pretrainer.training.optim import build_optimizer
from pretrainer.training.precision import (autocast, grad_scaler, resolve_device, set_determinism,
                                           set_threads)
from pretrainer.config import parse_duration
from pretrainer.training.schedule import LRSchedule, lr_factor

__all__ = [
    "Checkpoint", "FitResult", "LRSchedule", "atomic_write_bytes", "atomic_write_text", "autocast",
    "build_optimizer", "fit", "grad_scaler", "is_main_process", "load_checkpoint",
    "load_latest_checkpoint", "load_weights", "lr_factor", "parse_duration", "resolve_device",
    "restore", "save_checkpoint", "save_weights", "set_determinism", "set_threads", "train_step",
    "unwrap",
]
