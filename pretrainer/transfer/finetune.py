"""The fine-tuning run: one skeleton for every method and task.

start (threads, determinism, run directory) -> read the task's splits -> the method builds the
module it trains -> fit and select -> save -> score dev/test -> results.json.

`finetune.method` (methods/, registered in TRANSFER_METHODS) picks how the backbone transfers;
`finetune.task` (tasks/, registered in TASKS) what it transfers to.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from torch import nn

from pretrainer.config import Config, save_config, validate
from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_text, save_weights
from pretrainer.registry import TASKS, TRANSFER_METHODS
from pretrainer.runs import check_resume
from pretrainer.training.precision import set_determinism, set_threads
from pretrainer.transfer.backbone import load_backbone
from pretrainer.transfer.methods.base import TransferMethod
from pretrainer.transfer.distill import with_teacher_targets
from pretrainer.transfer.partial import count_parameters


def finetune(cfg: Config, resume: bool = False, log=print) -> dict:
    """Fine-tune on `cfg.finetune.data`; returns and writes `results.json` with dev (and test) metrics."""
    validate(cfg)  # a config built in code (curve, compare, the Python API) gets a loaded one's checks
    ft = cfg.finetune
    task = TASKS.get(ft.task)()
    method = TRANSFER_METHODS.get(ft.method)(cfg)
    check_finetune_config(cfg)
    run_dir = start(cfg)
    if resume:
        check_resume(run_dir, cfg, finetuning_keys(cfg))
    backbone, tokenizer, source = load_backbone(cfg)
    check_input_fits(method.input_length(backbone), backbone, source)
    check_pooling(ft.pooling, backbone, source)
    encode = method.encoder(task, tokenizer, method.input_length(backbone))
    splits = task.read_splits(ft, encode, cfg.run.seed, uses_labels=method.uses_labels)
    method.check_splits(splits)
    for split, stats in splits.read_stats.items():
        if stats.describe():  # the input policies' skips and strips, never silent
            log(f"{split} ({getattr(ft.data, split)}): {stats.describe()}")
    cost = encoding_costs(task, splits)
    for split, c in cost.items():
        log(f"{split}: {describe_cost(c)}")
    model = method.build(task, backbone, tokenizer, splits.label_names, log)
    task.prepare(model, splits, log)
    # Task-specific distillation: the teacher's logits ride in the training data (transfer/distill.py).
    train_splits, distilled = with_teacher_targets(cfg, task, splits, encode, log) if ft.teacher else (splits, {})
    trainable, total = count_parameters(model)

    # Only now, every check passed, is the run directory written: a refused run (a refused
    # --resume included) leaves it as it was.
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.toml")
    tokenizer.save(run_dir)
    log(f"fine-tuning {source} ({ft.method}: {trainable:,} of {total:,} parameters trainable) on "
        f"{len(splits.subset):,} of {task.size(splits.train):,} {task.unit}"
        f"{f' ({len(splits.label_names)} {task.labels_noun})' if task.labeled else ''} -> {run_dir}")
    began = time.perf_counter()
    fitted = method.fit(task, model, train_splits, run_dir, resume, log)
    seconds = time.perf_counter() - began
    save_transferable(*method.export(model), run_dir)

    results = {**task.record, "init": source, "method": ft.method, "label_fraction": ft.label_fraction,
               "n_labels": len(splits.subset), "seed": cfg.run.seed, "labels": splits.label_names,
               **distilled, **fitted, "trainable_params": trainable, "total_params": total,
               "train_seconds": round(seconds, 1),
               "input": {split: stats.as_dict() for split, stats in splits.read_stats.items()},
               **({"encoded": {"truncation": ft.truncation, "chunk_pooling": ft.chunk_pooling, **cost}} if cost else {})}
    for split, dataset in (("dev", splits.dev), ("test", splits.test)):
        if dataset is not None:
            results[split] = task.write_outputs(method.score(task, model, dataset, splits.label_names), run_dir,
                                                f"generated-{split}")
            log(f"{split}: {task.describe(results[split])}")
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    return results


def encoding_costs(task, splits) -> dict:
    """What each split costs to read, per example (chunks, tokens encoded), for results.json."""
    out = {}
    for split in ("train", "dev", "test"):
        dataset = getattr(splits, split)
        cost = task.encoding_cost(dataset) if dataset is not None else None
        if cost:
            out[split] = cost
    return out


def describe_cost(cost: dict) -> str:
    line = (f"{cost['chunks_per_document']:.2f} chunks and {cost['tokens_per_document']:.0f} tokens encoded per "
            f"example")
    if "pieces_per_document" in cost:
        line += (f" (of {cost['pieces_per_document']:.0f} word pieces, {cost['pieces_kept_per_document']:.0f} read; "
                 f"{100 * cost['truncated_fraction']:.1f}% of examples cut)")
    return line


def check_finetune_config(cfg: Config) -> None:
    """One-line errors, naming the key, for settings the run cannot use."""
    ft = cfg.finetune
    task = TASKS.get(ft.task)()
    TRANSFER_METHODS.get(ft.method)(cfg).check(task)
    if not ft.data.train:
        raise PretrainerError("config key 'finetune.data.train' is empty: name the labeled training file")
    task.check(ft)
    if ft.teacher and not TRANSFER_METHODS.get(ft.method).distills:
        raise PretrainerError(f"config key 'finetune.teacher': method {ft.method!r} does not train by gradient "
                              f"on a loss, so it cannot learn a teacher's soft labels; use full, freeze, llrd, "
                              f"lora, soft_prompt or cloze")
    if ft.distill_unlabeled and not ft.teacher:
        raise PretrainerError("config key 'finetune.distill_unlabeled' needs finetune.teacher: unlabeled text "
                              "trains only through a teacher's soft labels")
    if ft.gradual_unfreezing:
        if TRANSFER_METHODS.get(ft.method).fit is not TransferMethod.fit:
            raise PretrainerError(f"config key 'finetune.gradual_unfreezing': method {ft.method!r} does not train "
                                  f"layers by gradient steps, so there is nothing to unfreeze; use full, llrd, "
                                  f"freeze, lora or soft_prompt")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise PretrainerError("config key 'finetune.gradual_unfreezing' runs in one process only: DDP fixes "
                                  "which parameters train when it wraps the model")
    if ft.patience and not ft.data.dev:
        raise PretrainerError("config key 'finetune.patience' needs a dev set (finetune.data.dev): early "
                              "stopping never looks at test data")


def finetuning_keys(cfg: Config) -> tuple[str, ...]:
    """What a fine-tuning run is made of, for `--resume` to keep: [finetune] and the seed, and
    [model] / [tokenizer] when they, not finetune.init, give the backbone."""
    return ("run.seed", "finetune", "impl") + (() if cfg.finetune.init else ("model", "tokenizer"))


def check_pooling(pooling: str, backbone: nn.Module, source: str) -> None:
    """finetune.pooling among those the backbone computes (recurrent models add last, max, concat)."""
    able = getattr(backbone, "poolings", ("cls", "mean"))
    if pooling not in able:
        raise PretrainerError(f"config key 'finetune.pooling' = {pooling!r} is not one {backbone.config.name} "
                              f"({source}) computes; choose {', '.join(able)}")


def check_input_fits(input_length: int, backbone: nn.Module, source: str) -> None:
    """finetune.max_len within the backbone's position table, checked once the backbone is read."""
    max_len = getattr(getattr(backbone, "config", None), "max_len", None)
    if max_len is not None and input_length > max_len:
        raise PretrainerError(f"config key 'finetune.max_len' = {input_length} is longer than the backbone's "
                              f"position table (max_len = {max_len}, from {source}); set it to at most {max_len}")


def start(cfg: Config) -> Path:
    """Threads and seeds set, and the run directory, checked."""
    set_threads(cfg.impl)
    set_determinism(cfg.impl, cfg.run.seed)  # before the backbone and the head are built
    run_dir = run_directory(cfg)
    init = Path(cfg.finetune.init)
    if cfg.finetune.init and (init / "model.json").is_file() and init.resolve() == run_dir.resolve():
        raise PretrainerError(f"config key 'finetune.dir' = {str(run_dir)!r} is the init run itself: its "
                              "model would be overwritten; fine-tune into another directory")
    return run_dir


def run_directory(cfg: Config) -> Path:
    return Path(cfg.finetune.dir or Path(cfg.run.dir) / "finetune")


def save_transferable(module: nn.Module, spec: dict | None, run_dir: Path) -> None:
    """Leave a run directory that loads and exports like any run: `module`'s weights, and with a
    `spec` (from the method's `export`), the model.json that rebuilds it."""
    if spec is not None:
        atomic_write_text(run_dir / "model.json", json.dumps(spec, indent=2))
    save_weights(module, run_dir / "model.safetensors")
