"""Score a finished fine-tuned model on labeled files: `pretrainer evaluate CONFIG --finetuned`.

The model is the one in `finetune.dir`: a run of any `finetune.method`, or a Hugging Face
classifier or tagger brought in with `pretrainer import`. Its method rebuilds it as it used it
(a cloze run with its template, verbalizer and calibration; a soft-prompt run around its init's
architecture), from the run's own config.toml. The files are `finetune.data.dev` and
`finetune.data.test` of the config given, read with the rest of its `[finetune.data]`, so any
file of the same shape is one override away. The run's own label names (results.json, or
imported_from.json) fix which output is which label, so a file that holds only some of the
labels, or lists them in another order, is still scored right.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

from pretrainer.config import Config, load_config
from pretrainer.data.readers import ReadStats
from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_text
from pretrainer.registry import TASKS, TRANSFER_METHODS
from pretrainer.runs import load_run, run_label_names
from pretrainer.training.precision import resolve_device, set_threads
from pretrainer.transfer.finetune import run_directory
from pretrainer.transfer.methods import TransferMethod
from pretrainer.transfer.tasks import Task


def evaluate_finetuned(cfg: Config, log=print) -> dict:
    """Metrics of the model in `finetune.dir` on each of finetune.data.dev / test that is set;
    also written to `<finetune.dir>/evaluation.json`. Classification: accuracy and macro-F1;
    tagging: entity-level precision / recall / F1 (per type too) and word accuracy."""
    data = cfg.finetune.data
    run_dir = run_directory(cfg)
    files = {split: path for split, path in (("dev", data.dev), ("test", data.test)) if path}
    if not files:
        raise PretrainerError("config keys 'finetune.data.dev' and 'finetune.data.test' are both empty: "
                              "name the labeled file(s) to score")
    labels = run_label_names(run_dir)
    if labels is None:
        if not _finished_unlabeled_run(run_dir):
            raise PretrainerError(f"{run_dir}: no label names (results.json or imported_from.json): "
                                  "not a finished fine-tuning run")
        labels = []  # a text-to-text run: its targets are texts
    set_threads(cfg.impl)
    model, tokenizer, task, method = rebuild(run_dir, labels, cfg, log)
    model.to(resolve_device(cfg.impl))
    encode = method.encoder(task, tokenizer, method.input_length(getattr(model, "backbone", model)))
    results = {"run": str(run_dir), "labels": labels}
    for split, path in files.items():
        stats = ReadStats()  # what the input policies skipped or stripped, reported with the scores
        dataset = task.read_evaluation_file(path, data, encode, labels, stats)
        if stats.describe():
            log(f"{split} ({path}): {stats.describe()}")
        m = {**task.evaluate(model, dataset, labels, cfg.finetune.train.batch_size, final=True),
             "n_examples": task.size(dataset)}
        cost = task.encoding_cost(dataset)
        if cost:  # how the run reads long texts (its config.toml), and what that costs per example
            m["encoded"] = {"truncation": method.ft.truncation, "chunk_pooling": method.ft.chunk_pooling, **cost}
        m = task.write_outputs(m, run_dir, f"evaluation-generated-{split}")
        log(f"{split} ({path}): {task.describe(m)} ({m['n_examples']:,} examples)")
        results[split] = {"file": str(path), **m, "input": stats.as_dict()}
    atomic_write_text(run_dir / "evaluation.json", json.dumps(results, indent=2))
    return results


def rebuild(run_dir: Path, labels: list[str], cfg: Config, log) -> tuple[nn.Module, object, Task, TransferMethod]:
    """(model in eval mode, tokenizer, task, method) of a finished run. A run made here says its
    method and task in its config.toml; an imported model brings no recipe: it is a plain
    classifier or tagger, read with the given config's lengths."""
    if (run_dir / "config.toml").is_file():
        recipe = load_config(run_dir / "config.toml")
        task = TASKS.get(recipe.finetune.task)()
        method = TRANSFER_METHODS.get(recipe.finetune.method)(recipe)
        model, tokenizer = method.rebuild(task, run_dir, labels, log)
    else:
        model, tokenizer = load_run(run_dir)
        task = _task_with_head(model, run_dir)
        recipe = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, task=task.name, method="full"))
        method = TRANSFER_METHODS.get("full")(recipe)
    if task.labeled and model.num_labels != len(labels):
        raise PretrainerError(f"{run_dir}: the model has {model.num_labels} outputs but the run names "
                              f"{len(labels)} labels")
    return model.eval(), tokenizer, task, method


def _finished_unlabeled_run(run_dir: Path) -> bool:
    """A finished run of a task without labels (results.json and config.toml say so)."""
    if not ((run_dir / "results.json").is_file() and (run_dir / "config.toml").is_file()):
        return False
    return not TASKS.get(load_config(run_dir / "config.toml").finetune.task).labeled


def _task_with_head(model: nn.Module, run_dir: Path) -> Task:
    for name in TASKS:
        task = TASKS.get(name)()
        if task.labeled and isinstance(model, task.head_class):  # a recipe-less import is a classifier or tagger
            return task
    raise PretrainerError(f"{run_dir}: the model has no classification or tagging head (a pre-training run?)")
