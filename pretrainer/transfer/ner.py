"""Fine-tuning for token classification (NER): a tagging head on a backbone, CoNLL files in,
entity-level precision/recall/F1 out. The sentence-classification counterpart, and the
helpers shared with it (backbone loading, model selection, saving), are in finetune.py."""

from __future__ import annotations

import json
import time

import torch
from torch import nn

from pretrainer.config import Config, save_config
from pretrainer.errors import PretrainerError
from pretrainer.transfer.finetune import (_load_backbone, _save_transferable, check_finetune_config,
                                          check_tagger_method, run_directory, train_and_select)


def finetune_tokens(cfg: Config, resume: bool = False, log=print) -> dict:
    """Fine-tune a tagger on `cfg.finetune.data` (CoNLL files); returns and writes `results.json`
    with dev (and test) entity metrics."""
    from pretrainer.data.conll import (TaggingLoader, encode_sentences, infer_tag_names,
                                       iterate_tagging_once, sentence_subset)
    from pretrainer.objectives.token_classification import TokenClassificationObjective
    from pretrainer.io import atomic_write_text
    from pretrainer.training.precision import set_determinism, set_threads
    from pretrainer.transfer.methods import count_parameters

    ft = cfg.finetune
    check_finetune_config(cfg)
    if ft.data.format not in ("auto", "conll"):
        raise PretrainerError(f"config key 'finetune.data.format' = {ft.data.format!r}: finetune.task = "
                              f"\"tokens\" reads CoNLL files (format = \"conll\")")
    set_threads(cfg.impl)
    set_determinism(cfg.impl, cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    backbone, tokenizer, source = _load_backbone(cfg, log)

    train_sentences = read_tagged_split(ft.data.train, ft.data)
    label_names = ft.data.labels or infer_tag_names(train_sentences)
    train_set = encode_sentences(train_sentences, tokenizer, label_names, ft.max_len)
    subset = sentence_subset(len(train_set), ft.label_fraction, ft.n_labels, seed=cfg.run.seed)
    dev_set, test_set = (encode_tagged_file(path, ft.data, tokenizer, label_names, ft.max_len) if path else None
                         for path in (ft.data.dev, ft.data.test))

    model = build_tagger(ft, backbone, len(label_names))
    if model.crf is not None:
        observed = [train_set.word_labels[i] for i in subset]
        forbidden = model.crf.restrict_to_iob2(label_names, observed)
        log(f"CRF over {len(label_names)} tags: {forbidden} of {len(label_names) ** 2} transitions forbidden (IOB2)")
    trainable, total = count_parameters(model)
    objective = TokenClassificationObjective(label_names)
    batches = TaggingLoader(train_set, ft.train.batch_size, seed=cfg.run.seed, indices=subset)

    run_dir = run_directory(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.toml")
    tokenizer.save(run_dir)
    log(f"fine-tuning {source} ({ft.method}: {trainable:,} of {total:,} parameters trainable) on "
        f"{len(subset):,} of {len(train_set):,} tagged sentences ({len(label_names)} tags) -> {run_dir}")

    def evaluate(m, dataset, per_type=False):
        return objective.evaluate(m, iterate_tagging_once(dataset, ft.train.batch_size), per_type=per_type)

    eval_set = dev_set or test_set
    start = time.perf_counter()
    steps = train_and_select(cfg, model, objective, batches, len(subset), run_dir,
                             (lambda m: evaluate(m, eval_set)) if eval_set is not None else None,
                             has_dev=dev_set is not None, metric="f1", resume=resume, log=log)
    seconds = time.perf_counter() - start
    _save_transferable(model, run_dir)

    results = {"task": "tokens", "init": source, "method": ft.method, "label_fraction": ft.label_fraction,
               "n_labels": len(subset), "seed": cfg.run.seed, "labels": label_names, "steps": steps,
               "trainable_params": trainable, "total_params": total, "train_seconds": round(seconds, 1)}
    for split, dataset in (("dev", dev_set), ("test", test_set)):
        if dataset is not None:
            results[split] = evaluate(model, dataset, per_type=True)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    for split in ("dev", "test"):
        if split in results:
            m = results[split]
            log(f"{split}: entity F1 {m['f1']:.4f} (precision {m['precision']:.4f}, recall {m['recall']:.4f}), "
                f"word accuracy {m['accuracy']:.4f}")
    return results


def build_tagger(ft, backbone: nn.Module, num_labels: int) -> nn.Module:
    """A TokenClassifier set up for `ft.method` (full, freeze, llrd or lora)."""
    from pretrainer.models.heads import TokenClassifier
    from pretrainer.transfer.methods import head_kwargs, restrict_trainable

    check_tagger_method(ft.method)
    tagger = TokenClassifier(backbone, num_labels, case_features=ft.case_features, crf=ft.crf,
                             crf_lr=ft.crf_lr, **head_kwargs(ft))
    return restrict_trainable(tagger, ft)


def encode_tagged_file(path: str, data_cfg, tokenizer, label_names: list[str], max_len: int):
    """A CoNLL dev/test file read and encoded for a tagger with these labels."""
    from pretrainer.data.conll import encode_sentences

    return encode_sentences(read_tagged_split(path, data_cfg), tokenizer, label_names, max_len)


def read_tagged_split(path: str, data_cfg):
    from pretrainer.data.conll import read_conll

    sentences = read_conll(path, data_cfg.token_prefix, data_cfg.on_bad_utf8)
    if not sentences:
        raise PretrainerError(f"{path}: no tagged sentences (expected `word<TAB>tag` lines)")
    return sentences
