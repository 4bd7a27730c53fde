"""Score a finished fine-tuned model on labeled files: `pretrainer evaluate CONFIG --finetuned`.

The model is the one in `finetune.dir` (a fine-tuning run, or a Hugging Face classifier or
tagger brought in with `pretrainer import`); the files are `finetune.data.dev` and
`finetune.data.test`, read with the rest of `[finetune.data]`, so any file of the same shape
can be scored by overriding them. The run's own label names (results.json, or
imported_from.json) fix which output is which label, so a file whose labels are ordered
differently, or miss one, is still scored right.

Scored: runs whose model is a classifier or a tagger (methods full, freeze, llrd, lora). A
probe, cloze or soft-prompt run keeps no such model; its scores are in its results.json.
"""

from __future__ import annotations

import json

from pretrainer.config import Config
from pretrainer.errors import PretrainerError


def evaluate_finetuned(cfg: Config, log=print) -> dict:
    """Metrics of the model in `finetune.dir` on each of finetune.data.dev / test that is set;
    also written to `<finetune.dir>/evaluation.json`. Classification: accuracy and macro-F1;
    tagging: entity-level precision / recall / F1 (per type too) and word accuracy."""
    from pretrainer.api import load_run, run_label_names
    from pretrainer.models.heads import SequenceClassifier, TokenClassifier
    from pretrainer.training.checkpoint import atomic_write_text
    from pretrainer.transfer.finetune import run_directory

    ft = cfg.finetune
    run_dir = run_directory(cfg)
    files = {split: path for split, path in (("dev", ft.data.dev), ("test", ft.data.test)) if path}
    if not files:
        raise PretrainerError("config keys 'finetune.data.dev' and 'finetune.data.test' are both empty: "
                              "name the labeled file(s) to score")
    model, tokenizer = load_run(run_dir)
    if not isinstance(model, (SequenceClassifier, TokenClassifier)):
        raise PretrainerError(f"{run_dir}: the model has no classification or tagging head (a probe, cloze or "
                              "soft-prompt run, or a pre-training run); its scores are in its results.json")
    labels = run_label_names(run_dir)
    if labels is None or len(labels) != model.num_labels:
        raise PretrainerError(f"{run_dir}: no label names for the model's {model.num_labels} outputs "
                              "(results.json or imported_from.json)")
    model.eval()
    score = _tagging_scorer if isinstance(model, TokenClassifier) else _classification_scorer
    results = {"run": str(run_dir), "labels": labels}
    for split, path in files.items():
        results[split] = {"file": str(path), **score(cfg, model, tokenizer, labels, path)}
        m = results[split]
        if isinstance(model, TokenClassifier):
            log(f"{split} ({path}): entity F1 {m['f1']:.4f} (precision {m['precision']:.4f}, "
                f"recall {m['recall']:.4f}), word accuracy {m['accuracy']:.4f}")
        else:
            log(f"{split} ({path}): accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} "
                f"({m['n_examples']:,} examples)")
    atomic_write_text(run_dir / "evaluation.json", json.dumps(results, indent=2))
    return results


def _classification_scorer(cfg: Config, model, tokenizer, labels: list[str], path: str) -> dict:
    from pretrainer.data.labeled import encode_examples, iterate_once
    from pretrainer.data.readers import read_labeled
    from pretrainer.objectives.classification import ClassificationObjective
    from pretrainer.transfer.finetune import evaluation_sample

    ft = cfg.finetune
    examples = evaluation_sample(read_labeled(path, ft.data), ft.data.max_eval_examples)
    dataset = encode_examples(examples, tokenizer, labels, ft.max_len)
    metrics = ClassificationObjective(len(labels)).evaluate(model, iterate_once(dataset, ft.train.batch_size))
    return {**metrics, "n_examples": len(dataset.labels)}


def _tagging_scorer(cfg: Config, model, tokenizer, labels: list[str], path: str) -> dict:
    from pretrainer.data.conll import encode_sentences, iterate_tagging_once
    from pretrainer.objectives.token_classification import TokenClassificationObjective
    from pretrainer.transfer.ner import read_tagged_split

    ft = cfg.finetune
    dataset = encode_sentences(read_tagged_split(path, ft.data), tokenizer, labels, ft.max_len)
    return TokenClassificationObjective(labels).evaluate(model, iterate_tagging_once(dataset, ft.train.batch_size),
                                                         per_type=True)
