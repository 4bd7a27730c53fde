"""The one training loop, shared by pre-training and fine-tuning.

`train_step` takes one optimizer step over `accum` micro-batches; `fit` repeats it under
the learning-rate schedule, logs, evaluates, checkpoints, and resumes exactly where a
checkpoint left off.

A step whose loss or gradient norm is not finite is handled by `train.on_nonfinite`:
"stop" ends the run with an error naming the step, "skip" drops that step's update and
goes on, up to `train.max_skips` skipped steps. The check adds no host read per step:
each step's flag stays on the device (the gradient norm is computed for clipping anyway)
and is read with the metrics on log steps, before every checkpoint (so no checkpoint
holds weights a non-finite step touched) and at the end. Skipping is decided on the
device too: the fused AdamW takes a `found_inf` flag (as it does from a GradScaler) and
leaves weights, moments and step count untouched when it is set.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from pretrainer.config import parse_duration
from pretrainer.errors import PretrainerError
from pretrainer.io import is_disk_full, save_weights, unwrap
from pretrainer.training.adversarial import adversarial_step, build_optimizer_set, is_adversarial
from pretrainer.training.checkpoint import last_good_checkpoint, load_latest_checkpoint, save_checkpoint
from pretrainer.training.distributed import (barrier, call_objective, collective_failure_reason, full_state,
                                             full_tensor, give_ranks_own_rng_streams, init_distributed,
                                             is_collective_failure, mark_group_broken, mean_over_ranks, parallelize,
                                             rank0_says, restore_checkpoint, share_lrs)
from pretrainer.training.logging import MetricsLogger, Progress
from pretrainer.training.optim import build_optimizer
from pretrainer.training.prefetch import PrefetchLoader
from pretrainer.training.precision import autocast, grad_scaler, set_threads
from pretrainer.training.schedule import LRSchedule


@dataclass
class FitResult:
    step: int                    # optimizer steps taken in total (across resumes)
    metrics: dict                # training metrics averaged over the last logging window
    eval_history: list[dict] = field(default_factory=list)  # [{"step": s, **eval metrics}]
    elapsed: float = 0.0         # training seconds, across resumes


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train_step(model: nn.Module, objective, batches: Iterator[dict], optimizer: torch.optim.Optimizer,
               accum: int = 1, autocast_ctx=None, grad_clip: float = 0.0, *,
               scaler: torch.amp.GradScaler | None = None, device: torch.device | None = None,
               skip_nonfinite: bool = False) -> dict:
    """One optimizer step over `accum` micro-batches drawn from `batches`.

    Each micro-batch loss is divided by `accum`, so with mean-reduced losses the gradient
    equals that of one batch `accum` times larger. Returns the objective's metrics averaged
    over micro-batches and `grad_norm` (before clipping) as detached float64 0-d tensors on
    the device, this rank's own, `n_tokens` summed (an int), and `nonfinite`, a 0-d bool
    tensor: the loss or the gradient norm was NaN or inf. Nothing is read back to the host,
    so the device is not waited for: `fit` reads metrics (and averages them over ranks) only
    when it logs. `autocast_ctx` is a re-enterable context manager (see `precision.autocast`).

    With `skip_nonfinite` a step whose gradient norm is not finite changes nothing (see the
    module docstring); the norm is of the all-reduced gradients, so every rank skips alike.
    """
    autocast_ctx = autocast_ctx if autocast_ctx is not None else contextlib.nullcontext()
    sums: dict[str, torch.Tensor | float] = {}
    n_tokens = 0
    for i in range(accum):
        batch = next(batches)
        if device is not None:
            batch = _to_device(batch, device)
        # DDP all-reduces gradients in backward; only the last micro-batch needs to.
        last = i == accum - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast_ctx:
                out = call_objective(model, objective, batch)  # through DDP/FSDP's forward
            loss = out["loss"] / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        for key, value in out.items():
            if key == "n_tokens":
                n_tokens += int(value)
            elif torch.is_tensor(value) or isinstance(value, (int, float)):
                value = value.detach().float() if torch.is_tensor(value) else float(value)
                sums[key] = sums.get(key, 0.0) + value

    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        grad_norm = torch.zeros(())
    else:
        # Under FSDP the norm of local shards is a DTensor; full_tensor makes it global.
        grad_norm = full_tensor(torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True))
        if grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, grad_clip, grad_norm, foreach=True)
    if scaler is not None:
        # Skips the step when fp16 gradients overflowed: an overflow is the scaler's business,
        # so only a non-finite loss counts as non-finite below.
        scaler.step(optimizer)
        scaler.update()
        bad_grads = None
    else:
        bad_grads = ~torch.isfinite(grad_norm.detach())
        if skip_nonfinite:
            _step_unless(optimizer, bad_grads)
        else:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    # float64 from here on, as the Python floats these once were: window means stay the same.
    metrics = {key: _as_float64(value, device) / accum for key, value in sums.items()}
    metrics["grad_norm"] = grad_norm.detach().double()
    metrics["n_tokens"] = n_tokens
    loss = metrics.get("loss")
    nonfinite = (~torch.isfinite(loss) if loss is not None
                 else torch.zeros((), dtype=torch.bool, device=metrics["grad_norm"].device))
    if bad_grads is not None:
        nonfinite = nonfinite | bad_grads.to(nonfinite.device)
    metrics["nonfinite"] = nonfinite
    return metrics


def _step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """`optimizer.step()`, or nothing at all where the 0-d bool `skip` is set.

    The fused Adam(W) kernels read a `found_inf` tensor on the device (the channel a
    GradScaler uses) and leave parameters, moments and the step count as they were, so
    no host read is needed. Other optimizers are asked on the host: one read per step.
    """
    if getattr(optimizer, "_step_supports_amp_scaling", False) and optimizer.defaults.get("fused"):
        optimizer.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(skip):
        optimizer.step()


def _as_float64(value, device: torch.device | None) -> torch.Tensor:
    if torch.is_tensor(value):
        return value.double()
    return torch.tensor(value, dtype=torch.float64, device=device)


# Metrics that are the same on every rank already (gradients are all-reduced), not averaged again.
_SAME_ON_EVERY_RANK = ("grad_norm",)


class _Window:
    """Training metrics since the last log line; time counts only inside `train_step`.

    Sums stay on the device between log lines: `means()` reads them back (and averages
    over ranks) once per window instead of once per step.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.tokens = 0
        self.seconds = 0.0
        # On the device: how many steps were not finite, the first of them (inf: none), and
        # how many were finite (the metrics' divisor: a skipped step's NaN would spoil the mean).
        self.nonfinite: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict, seconds: float, step: int) -> None:
        bad = metrics["nonfinite"]
        for key, value in metrics.items():
            if key not in ("n_tokens", "nonfinite"):
                value = torch.where(bad.to(value.device), 0.0, value)
                # A step-by-step float64 sum: the same numbers as summing the per-step floats.
                self.sums[key] = value if key not in self.sums else self.sums[key] + value
        # Python numbers go into the kernels as arguments: no host-to-device copy, no wait.
        first = torch.where(bad, bad.double() * step, math.inf)
        bad = bad.double()
        if not self.nonfinite:
            self.nonfinite = {"nonfinite_steps": bad, "first_nonfinite_step": first, "finite_steps": 1 - bad}
        else:
            seen = self.nonfinite
            seen["nonfinite_steps"] = seen["nonfinite_steps"] + bad
            seen["first_nonfinite_step"] = torch.minimum(seen["first_nonfinite_step"], first)
            seen["finite_steps"] = seen["finite_steps"] + (1 - bad)
        self.tokens += metrics["n_tokens"]
        self.steps += 1
        self.seconds += seconds

    def _read(self, values: dict) -> dict:
        # The first non-finite step: this rank's own (under DDP every rank sees the same
        # non-finite gradient norm); the counts are averaged, so > 0 when any rank had one.
        return mean_over_ranks(values, same_on_every_rank=_SAME_ON_EVERY_RANK + ("first_nonfinite_step",))

    def means(self) -> tuple[dict, dict]:
        """Plain floats: each metric's mean over the window's finite steps and over ranks, and
        the non-finite record (`nonfinite_steps`, `first_nonfinite_step`).

        Every rank must call it at the same step (one all-reduce).
        """
        values = self._read({**self.sums, **self.nonfinite})
        finite = values["finite_steps"]
        means = {key: values[key] / finite if finite else math.nan for key in self.sums}
        return means, {k: values[k] for k in ("nonfinite_steps", "first_nonfinite_step")}

    def read_nonfinite(self) -> dict:
        """Only the non-finite record, for the check before a checkpoint between log steps."""
        if not self.steps:
            return {"nonfinite_steps": 0.0, "first_nonfinite_step": math.inf}
        values = self._read({k: self.nonfinite[k] for k in ("nonfinite_steps", "first_nonfinite_step")})
        return values

    def tokens_per_s(self) -> float | None:
        return self.tokens * world_size() / self.seconds if self.seconds > 0 else None


@contextlib.contextmanager
def _deferred_interrupt(log: Callable[[str], None]):
    """Turn the first Ctrl-C into a flag the loop checks between steps.

    Stopping mid-step would leave the weights, optimizer and data position out of step
    with each other; between steps they agree and a checkpoint resumes exactly. A second
    Ctrl-C stops at once.
    """
    requested = [False]
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield lambda: False
        return

    def on_sigint(signum, frame):
        if requested[0]:
            raise KeyboardInterrupt
        requested[0] = True
        log("interrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: requested[0]
    finally:
        signal.signal(signal.SIGINT, previous)


def fit(model: nn.Module, objective, train_batches, train_cfg, impl_cfg, run_dir,
        eval_fn: Callable[[nn.Module], dict] | None = None, resume: bool = False,
        total_steps: int | None = None, log: Callable[[str], None] = print, *,
        should_stop: Callable[[list[dict]], bool] | None = None,
        before_step: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic) -> FitResult:
    """Train `model` on `objective(model, batch)` over the infinite iterator `train_batches`.

    Length: `train_cfg.budget` (wall clock) if set, else `total_steps` if given (the
    caller converts epochs to steps), else `train_cfg.max_steps`. `eval_fn(model) -> dict`
    runs every `eval_every` steps and at the end; a checkpoint is written every
    `save_every` steps and at the end; the final weights go to `run_dir/model.safetensors`.
    Under torchrun the model is wrapped by `distributed.parallelize` (DDP or FSDP2) before
    compile; only rank 0 writes files. `should_stop(eval_history)` is asked after each
    evaluation (early stopping); `before_step(steps_taken)` runs before each step (gradual
    unfreezing: it may only change what a step does as a function of the step, so resume stays
    exact); `clock` is injectable for tests.
    """
    run_dir = Path(run_dir)
    set_threads(impl_cfg)
    device = init_distributed(impl_cfg).device
    main = is_main_process()
    adversarial = is_adversarial(objective)  # several optimizers stepped in turn (training/adversarial.py)
    if adversarial and world_size() > 1:
        raise PretrainerError(f"objective {objective.cfg.name!r} trains adversarially (one optimizer per "
                              f"{' / '.join(objective.optimizer_groups)}), which runs in one process only; "
                              f"start it without torchrun")
    model = parallelize(model, impl_cfg, device)  # the optimizer must see FSDP's sharded parameters

    budget_s = parse_duration(train_cfg.budget) if train_cfg.budget else None
    if budget_s is None and total_steps is None:
        if train_cfg.epochs > 0:
            raise ValueError("train.epochs is set: the caller must pass total_steps")
        total_steps = train_cfg.max_steps
    if budget_s is not None:
        total_steps = None

    optimizer = (build_optimizer_set(model, objective, train_cfg, device) if adversarial
                 else build_optimizer(model, train_cfg, device))
    schedule = LRSchedule.from_config(optimizer, train_cfg, total_steps=total_steps,
                                      budget_s=budget_s, clock=clock)
    scaler = grad_scaler(impl_cfg, device)
    autocast_ctx = autocast(impl_cfg, device)

    step = 0
    skipped = 0  # steps skipped for a non-finite loss or gradient (train.on_nonfinite = "skip"), in all
    if resume:
        ckpt = load_latest_checkpoint(run_dir)
        if ckpt is None:
            raise PretrainerError(f"no checkpoint in {run_dir / 'checkpoints'} to resume from; a run stopped "
                                  f"before its first checkpoint starts again without --resume")
        state = restore_checkpoint(ckpt, model, optimizer)  # weights, optimizer, RNG
        schedule.load_state_dict(state["schedule"])
        train_batches.load_state_dict(state["loader"])
        if scaler is not None and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
        skipped = int(state.get("nonfinite_skips", 0))
        step = ckpt.step
        if main:
            log(f"resuming from {ckpt.path} at step {step}")

    # The wrapper's state is the position after the last batch a step consumed, so checkpoints
    # taken while the next batch is being built still resume exactly.
    batches = PrefetchLoader(train_batches) if impl_cfg.prefetch else train_batches
    # Compile after the weights are final; `unwrap` sees through it for saving.
    run_model = torch.compile(model) if impl_cfg.compile else model
    logger = MetricsLogger(run_dir, enabled=main, resume_step=step if resume else None)
    progress = Progress(total_steps=total_steps, budget_s=budget_s, start_step=step, enabled=main,
                        bar=impl_cfg.progress, log_every=train_cfg.log_every, log=log,
                        unit="img" if getattr(objective, "modality", "text") == "image" else "tok")
    eval_history: list[dict] = []
    set_progress = getattr(objective, "set_progress", None)
    last_train: dict = {}
    last_eval_step = last_saved_step = step if resume else None
    window = _Window()

    skip_nonfinite = train_cfg.on_nonfinite == "skip"

    def check_nonfinite(record: dict, window_closed: bool) -> None:
        """Apply train.on_nonfinite to what a window's read-back says (the same on every rank)."""
        nonlocal skipped
        count = round(record["nonfinite_steps"])
        if window_closed:
            skipped += count if skip_nonfinite else 0
            total = skipped
        else:
            total = skipped + count
        if not count or (skip_nonfinite and total <= train_cfg.max_skips):
            return
        first = record["first_nonfinite_step"]
        where = f"step {int(first)}" if math.isfinite(first) else f"a step before step {step}"
        if not skip_nonfinite:
            raise PretrainerError(f"{where}: the loss or gradient norm is not finite (NaN or inf), so training "
                                  f"stopped (train.on_nonfinite = \"stop\"); {last_good_checkpoint(run_dir)}")
        raise PretrainerError(f"step {step}: {total} steps skipped for a non-finite loss or gradient norm, "
                              f"more than train.max_skips = {train_cfg.max_skips}; {last_good_checkpoint(run_dir)}")

    def log_train(lr: float) -> None:
        nonlocal window, last_train
        last_train, record = window.means()
        if record["nonfinite_steps"]:
            last_train["nonfinite_steps"] = round(record["nonfinite_steps"])
        if skip_nonfinite:
            last_train["skipped_steps"] = skipped + round(record["nonfinite_steps"])
        logger.log(step, "train", last_train, elapsed=schedule.elapsed(), lr=lr,
                   tokens_per_s=window.tokens_per_s())
        window = _Window()
        check_nonfinite(record, window_closed=True)

    def evaluate() -> None:
        nonlocal last_eval_step
        inner = unwrap(model)
        inner.eval()
        with torch.no_grad(), autocast_ctx:
            # Through the wrapper's forward: FSDP gathers the parameters there.
            results = call_objective(model, lambda m, _: eval_fn(m), None)
        inner.train()
        results = {k: float(v) if torch.is_tensor(v) else v for k, v in results.items()}
        eval_history.append({"step": step, **results})
        logger.log(step, "eval", results, elapsed=schedule.elapsed())
        if main:
            shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in results.items())
            progress.message(f"eval @ step {step}: {shown}")
        last_eval_step = step

    def checkpoint() -> None:
        nonlocal last_saved_step
        # No checkpoint of weights a non-finite step touched: one read between log steps
        # (saving reads everything back anyway).
        record = window.read_nonfinite()
        check_nonfinite(record, window_closed=False)
        model_state, optimizer_state = full_state(model, optimizer)  # FSDP: gathered on rank 0
        if main:
            # The loader's position counts global samples, so rank 0's state is every rank's.
            extra = {"schedule": schedule.state_dict(), "loader": batches.state_dict(),
                     "nonfinite_skips": skipped + round(record["nonfinite_steps"])}
            if scaler is not None:
                extra["grad_scaler"] = scaler.state_dict()
            try:
                save_checkpoint(run_dir, step, model_state, optimizer_state, extra,
                                keep=train_cfg.keep_checkpoints)
            except PretrainerError:  # a full disk: the other ranks wait at the barrier below in vain
                mark_group_broken()
                raise
        barrier()
        give_ranks_own_rng_streams()
        last_saved_step = step

    give_ranks_own_rng_streams()
    run_model.train()
    schedule.start()
    run_started = clock()
    try:
        with _deferred_interrupt(log) as interrupted:
            # Rank 0's clock decides when a time budget is spent, and its rates are used.
            # A step count ends every rank at the same step; only a clock needs rank 0 to decide.
            while not (rank0_says(schedule.done()) if schedule.by_time else schedule.done()):
                if schedule.by_time:
                    share_lrs(optimizer)
                lr = schedule.get_lr()
                if set_progress is not None:
                    set_progress(schedule.progress())  # objectives' own schedules (mask rate)
                if before_step is not None:
                    before_step(step)
                t0 = clock()
                if adversarial:
                    metrics = adversarial_step(run_model, objective, batches, optimizer, train_cfg.accum,
                                               train_step, autocast_ctx=autocast_ctx,
                                               grad_clip=train_cfg.grad_clip, scaler=scaler, device=device,
                                               skip_nonfinite=skip_nonfinite)
                else:
                    metrics = train_step(run_model, objective, batches, optimizer, train_cfg.accum,
                                         autocast_ctx, train_cfg.grad_clip, scaler=scaler, device=device,
                                         skip_nonfinite=skip_nonfinite)
                step += 1
                window.add(metrics, clock() - t0, step)
                schedule.step()
                tokens_per_s = window.tokens_per_s()
                if train_cfg.log_every and step % train_cfg.log_every == 0:
                    log_train(lr)  # the only per-window read-back and cross-rank reduction
                # Shows the last logged means: updating it costs no device sync.
                progress.update(step, last_train, lr=lr, tokens_per_s=tokens_per_s,
                                elapsed=schedule.elapsed(), run_elapsed=clock() - run_started)
                # Evaluate before saving: eval may draw random numbers, and the checkpoint
                # must hold the RNG state the next step will see.
                stop = False
                if eval_fn is not None and train_cfg.eval_every and step % train_cfg.eval_every == 0:
                    evaluate()
                    stop = should_stop is not None and rank0_says(should_stop(eval_history))
                if train_cfg.save_every and step % train_cfg.save_every == 0:
                    checkpoint()
                if rank0_says(interrupted()):
                    if last_saved_step != step:
                        checkpoint()
                    if main:
                        log(f"checkpoint saved at step {step}; continue with resume")
                    raise KeyboardInterrupt
                if stop:
                    if main:
                        log(f"early stop at step {step}: no better evaluation in a while")
                    break

            if window.steps:
                log_train(lr)
            if eval_fn is not None and last_eval_step != step:
                evaluate()
            if last_saved_step != step:
                checkpoint()
            final_state, _ = full_state(model)
            if main:
                save_weights(final_state, run_dir / "model.safetensors")
    except OSError as e:
        if not is_disk_full(e):
            raise
        mark_group_broken()  # only this rank stops here: the others must not be waited for
        raise PretrainerError(f"{e.filename or run_dir}: disk full at step {step} ({e.strerror}); "
                              f"{last_good_checkpoint(run_dir)}") from None
    except RuntimeError as e:
        if not is_collective_failure(e):
            raise
        mark_group_broken()
        raise PretrainerError(f"rank {dist.get_rank()}: lost contact with the other processes at step {step} "
                              f"({collective_failure_reason(e)}); {last_good_checkpoint(run_dir)}") from None
    finally:
        if batches is not train_batches:
            batches.close()  # leaves train_batches at the last consumed batch
        progress.close()
        logger.close()

    elapsed = schedule.elapsed()
    if main:
        log(f"trained {step} steps in {elapsed:.1f}s; weights in {run_dir / 'model.safetensors'}")
    return FitResult(step=step, metrics=last_train, eval_history=eval_history, elapsed=elapsed)
