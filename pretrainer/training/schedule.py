"""Learning-rate schedule: linear warmup, then cosine / linear decay or constant.

"stlr" is ULMFiT's slanted triangular rate (Howard & Ruder 2018): "linear" whose rise starts at
the floor instead of 0. Its cut_frac is `train.warmup` (0.1 in the paper) and its ratio is
1 / `train.min_lr_ratio` (32 in the paper: min_lr_ratio = 0.03125): the rate climbs from
lr / ratio to lr over the first cut_frac of training, then falls back to lr / ratio.

Progress through training is a number in [0, 1]. With a step budget it is
`steps / total_steps`; with a wall-clock budget (`train.budget = "30m"`) it is
`elapsed seconds / budget seconds`, so the decay is fitted to the time available and the
learning rate reaches its floor when the time is up.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from pretrainer.errors import PretrainerError

def warmup_fraction(warmup: float, total_steps: int | None) -> float:
    """`train.warmup` is a fraction of training when < 1 and a number of steps when >= 1."""
    if warmup < 0:
        raise PretrainerError(f"train.warmup must be >= 0, got {warmup}")
    if warmup < 1:
        return float(warmup)
    if not total_steps:
        raise ValueError("warmup given in steps needs the total number of steps")
    return min(1.0, warmup / total_steps)


def lr_factor(progress: float, warmup: float, schedule: str = "cosine", min_lr_ratio: float = 0.0,
              total_steps: int | None = None) -> float:
    """Multiplier on the peak learning rate at `progress` in [0, 1].

    Rises linearly from 0 (from `min_lr_ratio` for "stlr") to 1 over the warmup, then decays
    to `min_lr_ratio` at progress 1 (cosine, linear or stlr), or stays at 1 (constant).
    """
    w = warmup_fraction(warmup, total_steps)
    p = min(max(float(progress), 0.0), 1.0)
    if p < w:
        return rise(p / w, schedule, min_lr_ratio)
    if schedule == "constant":
        return 1.0
    decay = 1.0 if w >= 1.0 else (p - w) / (1.0 - w)
    if schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * decay))
    elif schedule in ("linear", "stlr"):
        shape = 1.0 - decay
    else:
        raise PretrainerError(f"train.schedule must be cosine, linear, stlr or constant, got {schedule!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def rise(fraction: float, schedule: str, min_lr_ratio: float) -> float:
    """The warmup's factor `fraction` of the way through it: from 0, or from the floor for stlr."""
    if schedule == "stlr":
        return min_lr_ratio + (1.0 - min_lr_ratio) * fraction
    return fraction


class LRSchedule:
    """Drives the optimizer's learning rate, step by step or by the clock.

    Call `step()` after each optimizer step; it sets the rate for the next one. Each
    param group's rate is its own base rate (`initial_lr`, normally the peak `lr`; larger
    or smaller for layer-wise groups) times `lr_factor`. The rate used for the step about
    to be taken counts that step as done, so the first step already has a non-zero rate
    and the last one runs at exactly `min_lr_ratio`.

    In budget mode (`budget_s` set) progress is elapsed seconds / budget. Elapsed time is
    read from `clock` (injectable for tests) between `start()` and now, plus what earlier
    runs of a resumed job spent. A warmup given in steps is kept in steps; when it ends,
    the fraction of the budget it took becomes the warmup fraction, which is the same as
    converting steps to a fraction with the total estimated from measured throughput.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_steps: int | None = None,
                 budget_s: float | None = None, warmup: float = 0.0, schedule: str = "cosine",
                 min_lr_ratio: float = 0.0, clock: Callable[[], float] = time.monotonic):
        if (total_steps is None) == (budget_s is None):
            raise ValueError("give exactly one of total_steps and budget_s")
        if total_steps is not None and total_steps < 1:
            raise PretrainerError(f"train.max_steps must be >= 1, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.budget_s = budget_s
        self.warmup = float(warmup)
        self.schedule = schedule
        self.min_lr_ratio = float(min_lr_ratio)
        self.clock = clock
        self.steps_done = 0
        self._elapsed_before = 0.0  # seconds spent by earlier runs of a resumed job
        self._started_at: float | None = None
        # Budget mode with warmup in steps: the warmup's share of the budget, known once it ends.
        self._budget_warmup: float | None = None
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    @classmethod
    def from_config(cls, optimizer, cfg, *, total_steps: int | None = None,
                    budget_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        """Build from a `TrainConfig`."""
        return cls(optimizer, total_steps=total_steps, budget_s=budget_s, warmup=cfg.warmup,
                   schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio, clock=clock)

    # ------------------------------------------------------------ time and progress

    def start(self) -> None:
        """Start (or restart after a resume) the clock that budget mode runs on."""
        self._started_at = self.clock()
        self._apply()

    def elapsed(self) -> float:
        """Training seconds so far, across resumes."""
        running = 0.0 if self._started_at is None else self.clock() - self._started_at
        return self._elapsed_before + running

    @property
    def by_time(self) -> bool:
        return self.budget_s is not None

    def progress(self) -> float:
        """Fraction of training done once the next step is taken, in [0, 1]."""
        if self.by_time:
            # Count the coming step at the mean step time so far, like a step budget does.
            elapsed = self.elapsed()
            per_step = elapsed / self.steps_done if self.steps_done else 0.0
            return min(1.0, (elapsed + per_step) / self.budget_s)
        return min(1.0, (self.steps_done + 1) / self.total_steps)

    def done(self) -> bool:
        if self.by_time:
            return self.elapsed() >= self.budget_s
        return self.steps_done >= self.total_steps

    def estimated_total_steps(self) -> int | None:
        """Total steps: exact with a step budget, extrapolated from throughput with a time budget."""
        if not self.by_time:
            return self.total_steps
        elapsed = self.elapsed()
        if self.steps_done == 0 or elapsed <= 0:
            return None
        return max(self.steps_done, round(self.steps_done * self.budget_s / elapsed))

    # ------------------------------------------------------------ the rate

    def factor(self) -> float:
        if not self.by_time:
            return lr_factor(self.progress(), self.warmup, self.schedule, self.min_lr_ratio,
                             total_steps=self.total_steps)
        if self.warmup < 1:
            return lr_factor(self.progress(), self.warmup, self.schedule, self.min_lr_ratio)
        if self._budget_warmup is None:
            if self.steps_done + 1 < self.warmup:
                return rise((self.steps_done + 1) / self.warmup, self.schedule, self.min_lr_ratio)
            self._budget_warmup = self.progress()  # the share of the budget warmup took
        if self.schedule == "constant":
            return 1.0
        # Warmup is over: decay over the rest of the budget (w = its share, p >= w).
        w = self._budget_warmup
        p = max(self.progress(), w)
        return lr_factor(p, w, self.schedule, self.min_lr_ratio) if w < 1 else self.min_lr_ratio

    def _apply(self) -> None:
        f = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    def step(self) -> None:
        """Count one optimizer step and set the rate for the next."""
        self.steps_done += 1
        self._apply()

    def get_lr(self) -> float:
        """The rate of the first param group (the peak-rate group, by convention)."""
        return self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        return {"step": self.steps_done, "elapsed": self.elapsed(),
                "budget_warmup": self._budget_warmup}

    def load_state_dict(self, state: dict) -> None:
        self.steps_done = int(state["step"])
        self._elapsed_before = float(state["elapsed"])
        self._budget_warmup = state.get("budget_warmup")
        self._started_at = None
        self._apply()
