"""Metrics to `metrics.jsonl` and TensorBoard, and progress to the terminal.

Each line of `run_dir/metrics.jsonl` is one record:
  {"step": 200, "split": "train" | "eval", "elapsed": seconds, "lr": float | null,
   "tokens_per_s": float | null, "metrics": {"loss": ..., ...}}
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Callable

from pretrainer.io import atomic_write_text


class MetricsLogger:
    """Appends metric records to `run_dir/metrics.jsonl` and TensorBoard (`run_dir/tb`).

    Only one process of a distributed job should log: pass `enabled=False` elsewhere.
    `resume_step` drops records after that step, which a crashed run wrote after its last
    checkpoint and the resumed run is about to produce again.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._tb_dir = Path(run_dir) / "tb"
        self._resume_step = resume_step
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of_record(line) <= resume_step]
            # Atomic: a process killed here must not lose the records before resume_step.
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._file = open(self.path, "a", encoding="utf-8")

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

            purge = None if self._resume_step is None else self._resume_step + 1
            self._tb = SummaryWriter(str(self._tb_dir), purge_step=purge)
        return self._tb

    def log(self, step: int, split: str, metrics: dict, *, elapsed: float | None = None,
            lr: float | None = None, tokens_per_s: float | None = None) -> None:
        if not self.enabled:
            return
        metrics = {k: _plain(v) for k, v in metrics.items()}
        record = {"step": step, "split": split, "elapsed": elapsed, "lr": lr,
                  "tokens_per_s": tokens_per_s, "metrics": metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        tb = self._writer()
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tb.add_scalar(f"{split}/{name}", value, step)
        if lr is not None:
            tb.add_scalar(f"{split}/lr", lr, step)
        if tokens_per_s is not None:
            tb.add_scalar(f"{split}/tokens_per_s", tokens_per_s, step)

    def close(self) -> None:
        if not self.enabled:
            return
        try:
            self._file.close()
        except OSError:
            pass  # only a write that already failed (and was reported: a full disk) leaves data to flush
        if self._tb is not None:
            self._tb.close()


def _step_of(record: dict) -> float:
    return record.get("step", math.inf) if isinstance(record, dict) else math.inf


def _step_of_record(line: str) -> float:
    try:
        return _step_of(json.loads(line))
    except json.JSONDecodeError:  # a half-written last line from a killed run
        return math.inf


def _plain(value):
    """Tensors and numpy scalars -> python numbers, so the record is JSON."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A tqdm bar (when `bar` is set and stderr is a terminal), else a compact line every
    `log_every` steps. Nothing at all when `enabled` is false (non-zero ranks).

    The ETA is step-based (remaining steps at the measured seconds per step) or, with a
    time budget, simply the budget left.
    """

    def __init__(self, *, total_steps: int | None, budget_s: float | None, start_step: int,
                 enabled: bool = True, bar: bool = True, log_every: int = 10,
                 log: Callable[[str], None] = print, unit: str = "tok"):
        self.total_steps = total_steps
        self.unit = unit  # what the objective's n_tokens counts: "tok" for text, "img" for images
        self.budget_s = budget_s
        self.log_every = max(1, log_every)
        self.log = log
        self.enabled = enabled
        self._bar = None
        self._start_step = start_step
        if enabled and bar and sys.stderr.isatty():
            from tqdm import tqdm

            total = budget_s if budget_s else total_steps  # a time budget fills the bar by seconds
            self._bar = tqdm(total=total, initial=0 if budget_s else start_step, file=sys.stderr,
                             dynamic_ncols=True, bar_format="{percentage:3.0f}%|{bar}| {desc}")

    def eta(self, step: int, elapsed: float, run_elapsed: float) -> float | None:
        if self.budget_s:
            return self.budget_s - elapsed
        done = step - self._start_step
        if done <= 0 or not self.total_steps:
            return None
        return (self.total_steps - step) * run_elapsed / done

    def update(self, step: int, metrics: dict, *, lr: float, tokens_per_s: float | None,
               elapsed: float, run_elapsed: float) -> None:
        """`elapsed` counts across resumes (the budget clock); `run_elapsed` only this run.

        `metrics` are plain floats (the loop passes the last logged window's means, which it
        reads back only at logging cadence); a missing loss shows as "?".
        """
        if not self.enabled:
            return
        eta = _format_seconds(self.eta(step, elapsed, run_elapsed))
        loss = metrics.get("loss")
        loss = f"{loss:.4f}" if isinstance(loss, (int, float)) else "?"
        tok_s = f"{tokens_per_s:,.0f}" if tokens_per_s is not None else "?"
        if self._bar is not None:
            self._bar.n = min(elapsed, self.budget_s) if self.budget_s else step
            self._bar.set_description_str(f"step {step} loss {loss} lr {lr:.2e} {tok_s} {self.unit}/s eta {eta}",
                                          refresh=True)
        elif step % self.log_every == 0:
            where = f"{step}" if self.budget_s else f"{step}/{self.total_steps}"
            self.log(f"step {where}  loss {loss}  lr {lr:.2e}  {tok_s} {self.unit}/s  "
                     f"elapsed {_format_seconds(elapsed)}  eta {eta}")

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            self.log(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
