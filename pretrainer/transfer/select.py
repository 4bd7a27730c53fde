"""Fit and select: the shared training step of every fine-tuning method that trains by gradient.

`fit` with model selection on dev: early stopping (finetune.patience) and the best evaluation's
weights restored at the end (finetune.keep_best). The best weights so far also live in the run
directory (`best.safetensors`, its score in the same file), so a run killed and resumed keeps the
best of all its evaluations, not only of those after the resume.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

from torch import nn

from pretrainer.config import Config
from pretrainer.io import read_model_state, read_safetensors, save_weights, unwrap
from pretrainer.training.distributed import is_fsdp
from pretrainer.training.loop import fit, is_main_process
from pretrainer.transfer.unfreeze import GradualUnfreezing


def train_and_select(cfg: Config, model: nn.Module, objective, batches, n_examples: int, run_dir: Path,
                     evaluate: Callable[[nn.Module], dict] | None, has_dev: bool, metric: str, resume: bool,
                     log) -> int:
    """`fit`, keeping the weights of the best evaluation of `metric` (higher is better) when there
    is a dev set, and unfreezing gradually when finetune.gradual_unfreezing says so. Returns the
    steps taken."""
    ft = cfg.finetune
    train_cfg = ft.train
    if has_dev and not train_cfg.eval_every and (ft.keep_best or ft.patience):
        # Model selection needs evaluations along the way: once per epoch unless told otherwise
        # (fit counts optimizer steps, an epoch's batches are micro-batches under accumulation).
        train_cfg = dataclasses.replace(train_cfg, eval_every=max(1, math.ceil(batches.steps_per_epoch / train_cfg.accum)))
    unfreezing = None
    if ft.gradual_unfreezing:
        every = ft.unfreeze_every or max(1, math.ceil(batches.steps_per_epoch / train_cfg.accum))
        unfreezing = GradualUnfreezing(model, every, log)
    best = BestWeights(metric, path=run_dir / BEST_WEIGHTS if ft.keep_best and has_dev else None, resume=resume)
    try:
        result = fit(model, objective, batches, train_cfg, cfg.impl, run_dir,
                     eval_fn=best.wrap(evaluate) if evaluate is not None else None,
                     resume=resume, total_steps=total_steps(train_cfg, n_examples), log=log,
                     should_stop=best.patience_spent(ft.patience) if ft.patience else None, before_step=unfreezing)
    finally:
        if unfreezing is not None:
            unfreezing.restore()
    if ft.keep_best and has_dev and best.restore(model):
        which = (f"number {best.evaluation} of {best.evaluations}" if best.evaluation
                 else "made before the resume")
        log(f"keeping the weights of the best dev evaluation ({which}, {metric} {best.score:.4f})")
    best.discard()  # the run's model.safetensors holds them from here on
    return result.step


BEST_WEIGHTS = "best.safetensors"


class BestWeights:
    """Tracks the best evaluation during `fit` and keeps a copy of those weights in memory and,
    given a `path`, on disk for a resumed run (patience counts again from the resume)."""

    def __init__(self, metric: str, path: Path | None = None, resume: bool = False):
        self.metric = metric
        self.path = path
        self.score: float | None = None
        self.evaluation = 0  # which evaluation (1-based) of this process was the best; 0: one before a resume
        self.state: dict | None = None
        self.evaluations = 0
        self.since_best = 0
        if path is not None and resume and path.is_file():
            self.state = read_model_state(path)
            self.score = float(read_safetensors(path)[1]["best_score"])

    def wrap(self, eval_fn):
        def evaluate_and_track(model):
            results = eval_fn(model)
            self.evaluations += 1
            score = float(results[self.metric])
            if self.score is None or score > self.score:
                self.score, self.evaluation, self.since_best = score, self.evaluations, 0
                self.state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
                # FSDP's sharded state stays in memory only (a gather per evaluation is not worth it).
                if self.path is not None and is_main_process() and not is_fsdp(model):
                    save_weights(self.state, self.path, {"best_score": repr(score), "metric": self.metric})
            else:
                self.since_best += 1
            return results

        return evaluate_and_track

    def patience_spent(self, patience: int):
        return lambda history: self.since_best >= patience

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights into `model`; False when nothing was tracked."""
        if self.state is None:
            return False
        unwrap(model).load_state_dict(self.state)
        return True

    def discard(self) -> None:
        if self.path is not None and is_main_process():
            self.path.unlink(missing_ok=True)


def total_steps(train_cfg, n_examples: int) -> int | None:
    if train_cfg.budget:
        return None
    if train_cfg.epochs > 0:
        per_epoch = math.ceil(n_examples / (train_cfg.batch_size * train_cfg.accum))
        return max(1, math.ceil(train_cfg.epochs * per_epoch), train_cfg.min_steps)
    return train_cfg.max_steps
