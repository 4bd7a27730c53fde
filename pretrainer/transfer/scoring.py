"""Score a finished fine-tuned model on labeled files: `pretrainer evaluate CONFIG --finetuned`.

The model is the one in `finetune.dir`: a run of any `finetune.method`, or a Hugging Face
classifier or tagger brought in with `pretrainer import`. It is rebuilt as its method used
it (a cloze run with its template, verbalizer and calibration; a soft-prompt run around its
init's architecture), from the run's own config.toml. The files are `finetune.data.dev` and
`finetune.data.test` of the config given, read with the rest of its `[finetune.data]`, so any
file of the same shape is one override away. The run's own label names (results.json, or
imported_from.json) fix which output is which label, so a file that holds only some of the
labels, or lists them in another order, is still scored right.
"""

from __future__ import annotations

import json
from pathlib import Path

from pretrainer.runs import run_label_names
from pretrainer.config import Config
from pretrainer.errors import PretrainerError


def evaluate_finetuned(cfg: Config, log=print) -> dict:
    """Metrics of the model in `finetune.dir` on each of finetune.data.dev / test that is set;
    also written to `<finetune.dir>/evaluation.json`. Classification: accuracy and macro-F1;
    tagging: entity-level precision / recall / F1 (per type too) and word accuracy."""
    from pretrainer.models.heads import TokenClassifier
    from pretrainer.io import atomic_write_text
    from pretrainer.training.precision import resolve_device, set_threads
    from pretrainer.transfer.finetune import run_directory

    data = cfg.finetune.data
    run_dir = run_directory(cfg)
    files = {split: path for split, path in (("dev", data.dev), ("test", data.test)) if path}
    if not files:
        raise PretrainerError("config keys 'finetune.data.dev' and 'finetune.data.test' are both empty: "
                              "name the labeled file(s) to score")
    labels = run_label_names(run_dir)
    if labels is None:
        raise PretrainerError(f"{run_dir}: no label names (results.json or imported_from.json): "
                              "not a finished fine-tuning run")
    set_threads(cfg.impl)
    model, tokenizer, recipe = _rebuild(run_dir, labels, log)
    model.to(resolve_device(cfg.impl))
    recipe = recipe or cfg.finetune  # an imported model brings no recipe: the given config's lengths
    results = {"run": str(run_dir), "labels": labels}
    for split, path in files.items():
        if isinstance(model, TokenClassifier):
            m = _score_tagging(model, tokenizer, labels, path, cfg, recipe)
            log(f"{split} ({path}): entity F1 {m['f1']:.4f} (precision {m['precision']:.4f}, "
                f"recall {m['recall']:.4f}), word accuracy {m['accuracy']:.4f}")
        else:
            m = _score_classification(model, tokenizer, labels, path, cfg, recipe)
            log(f"{split} ({path}): accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} "
                f"({m['n_examples']:,} examples)")
        results[split] = {"file": str(path), **m}
    atomic_write_text(run_dir / "evaluation.json", json.dumps(results, indent=2))
    return results


def _rebuild(run_dir: Path, labels: list[str], log):
    """(model in eval mode, tokenizer, the run's [finetune] section or None for an imported model)."""
    from pretrainer.runs import load_run
    from pretrainer.config import load_config
    from pretrainer.models.heads import SequenceClassifier, TokenClassifier
    from pretrainer.transfer.finetune import CLOZE_METHODS, build_classifier, calibrate_zero_shot

    run_cfg = load_config(run_dir / "config.toml") if (run_dir / "config.toml").is_file() else None
    recipe = run_cfg.finetune if run_cfg else None
    method = recipe.method if recipe else "full"
    if method == "soft_prompt":
        model, tokenizer = _soft_prompt_model(run_cfg, run_dir, labels)
    else:
        model, tokenizer = load_run(run_dir)
        if method in CLOZE_METHODS:  # saved as the encoder with its MLM head
            model = build_classifier(recipe, model, tokenizer, labels)
            if method == "cloze_zero_shot":
                calibrate_zero_shot(model, recipe, tokenizer, labels, log)
        elif not isinstance(model, (SequenceClassifier, TokenClassifier)):
            raise PretrainerError(f"{run_dir}: the model has no classification or tagging head "
                                  "(a pre-training run?)")
    if model.num_labels != len(labels):
        raise PretrainerError(f"{run_dir}: the model has {model.num_labels} outputs but the run names "
                              f"{len(labels)} labels")
    return model.eval(), tokenizer, recipe


def _soft_prompt_model(recipe: Config, run_dir: Path, labels: list[str]):
    """A soft-prompt run keeps its whole classifier's weights but no model.json: rebuild the
    classifier around its init's architecture (finetune.init must still exist), then load them."""
    from pretrainer.data.tokenizer import load_tokenizer
    from pretrainer.io import load_weights
    from pretrainer.transfer.finetune import _load_backbone, build_classifier

    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise PretrainerError(f"{run_dir}: no model.safetensors (is the run finished?)")
    backbone, _, _ = _load_backbone(recipe, log=lambda *_: None)
    tokenizer = load_tokenizer(run_dir)
    model = build_classifier(recipe.finetune, backbone, tokenizer, labels)
    load_weights(model, weights)
    return model, tokenizer


def _score_classification(model, tokenizer, labels: list[str], path: str, cfg: Config, recipe) -> dict:
    from pretrainer.data.labeled import iterate_once
    from pretrainer.objectives.classification import ClassificationObjective
    from pretrainer.transfer.finetune import encode_evaluation_file, example_encoder, input_length

    encode = example_encoder(recipe, tokenizer, input_length(recipe, model.backbone))
    dataset = encode_evaluation_file(path, cfg.finetune.data, encode, labels)
    batches = iterate_once(dataset, cfg.finetune.train.batch_size)
    return {**ClassificationObjective(len(labels)).evaluate(model, batches), "n_examples": len(dataset.labels)}


def _score_tagging(model, tokenizer, labels: list[str], path: str, cfg: Config, recipe) -> dict:
    from pretrainer.data.conll import iterate_tagging_once
    from pretrainer.objectives.token_classification import TokenClassificationObjective
    from pretrainer.transfer.ner import encode_tagged_file

    dataset = encode_tagged_file(path, cfg.finetune.data, tokenizer, labels, recipe.max_len)
    batches = iterate_tagging_once(dataset, cfg.finetune.train.batch_size)
    return TokenClassificationObjective(labels).evaluate(model, batches, per_type=True)
