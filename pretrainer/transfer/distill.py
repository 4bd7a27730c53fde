"""Task-specific distillation: a fine-tuned teacher's soft labels in the training data.

`finetune.teacher = RUN_DIR` (a fine-tuned run of the same task and label set, made with any
gradient or cloze method, or an imported classifier / tagger). Before fitting, the teacher reads
every training example with its own tokenizer and recipe (so the two models may tokenize
differently), once: its logits are cached on disk, keyed by a hash of its weights and of its
encoded inputs, so every label fraction and seed of a curve reuses them. For tagging, the
teacher's logits are per word (its first sub-token), so they carry over to the student's
sub-tokens whatever its tokenizer. `finetune.distill_unlabeled` adds in-domain text with no gold
label: the teacher labels it, and it trains through the soft term only. The loss is
objectives/soft_targets.SoftTargets (alpha * T^2 * KL + (1 - alpha) * CE), which the method's
fit uses when finetune.teacher is set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from pretrainer.config import Config, load_config
from pretrainer.data.collators import IGNORE_INDEX
from pretrainer.data.conll import TaggedSentence, iterate_tagging_once
from pretrainer.data.labeled import iterate_once
from pretrainer.data.readers import LabeledExamples, read_documents
from pretrainer.data.sources import cache_root
from pretrainer.data.text_config import TextDataConfig
from pretrainer.errors import PretrainerError
from pretrainer.io import save_weights
from pretrainer.registry import TRANSFER_METHODS
from pretrainer.runs import load_run, run_label_names
from pretrainer.training.precision import resolve_device
from pretrainer.transfer.tasks.base import Encoder, Splits, Task


def with_teacher_targets(cfg: Config, task: Task, splits: Splits, encode: Encoder, log) -> tuple[Splits, dict]:
    """`splits` whose training data carries the teacher's logits, with the unlabeled examples
    (if any) appended to the data and to the subset trained on; and the fields results.json adds."""
    ft = cfg.finetune
    teacher, teacher_encode, teacher_labels = load_teacher(ft.teacher, task, cfg, log)
    names = splits.label_names
    missing = [n for n in names if n not in teacher_labels]
    if missing or len(teacher_labels) != len(names):
        raise PretrainerError(f"finetune.teacher = {ft.teacher!r} predicts labels {teacher_labels}, the data "
                              f"{names}: distillation needs the same label set")
    order = torch.tensor([teacher_labels.index(n) for n in names])  # teacher column of each student label

    examples = task.read(ft.data.train, ft.data)
    extra = read_unlabeled(ft.distill_unlabeled, task, ft.data, names) if ft.distill_unlabeled else None
    per_example = teacher_logits(teacher, teacher_encode(examples, names), cfg)
    extra_logits = teacher_logits(teacher, teacher_encode(extra, names), cfg) if extra is not None else []
    per_example = [t[..., order] for t in list(per_example) + list(extra_logits)]

    train = splits.train
    subset = list(splits.subset)
    if extra is not None:
        unlabeled = without_labels(encode(extra, names))
        subset += range(len(train), len(train) + len(unlabeled))
        train = concatenate(train, unlabeled)
    tagging = hasattr(train, "label_word")
    train = dataclasses.replace(train, teacher_logits=per_example if tagging else torch.stack(per_example))
    log(f"distilling {ft.teacher} (alpha {ft.distill_alpha}, temperature {ft.distill_temperature})"
        + (f" on {len(subset) - len(splits.subset):,} unlabeled examples too" if extra is not None else ""))
    record = {"teacher": ft.teacher, "distill_alpha": ft.distill_alpha,
              "distill_temperature": ft.distill_temperature, "n_unlabeled": len(subset) - len(splits.subset)}
    return dataclasses.replace(splits, train=train, subset=subset), record


def load_teacher(spec: str, task: Task, cfg: Config, log) -> tuple[nn.Module, Encoder, list[str]]:
    """The fine-tuned teacher in eval mode, how it encodes examples, and its label names in output
    order. A run made here is rebuilt by its own method (from its config.toml), so it reads
    examples as it was trained to; an imported classifier or tagger is read plainly."""
    run_dir = Path(spec)
    labels = run_label_names(run_dir)
    if labels is None:
        raise PretrainerError(f"finetune.teacher = {spec!r}: no label names (results.json or imported_from.json): "
                              f"not a finished fine-tuning run")
    if (run_dir / "config.toml").is_file():
        recipe = load_config(run_dir / "config.toml")
        if recipe.finetune.task != task.name:
            raise PretrainerError(f"finetune.teacher = {spec!r} was fine-tuned for task {recipe.finetune.task!r}, "
                                  f"this run is {task.name!r}")
        method = TRANSFER_METHODS.get(recipe.finetune.method)(recipe)
        model, tokenizer = method.rebuild(task, run_dir, labels, log)
    else:
        model, tokenizer = load_run(run_dir)
        method = TRANSFER_METHODS.get("full")(cfg)
    if not isinstance(model, task.head_class) and not hasattr(model, "num_labels"):
        raise PretrainerError(f"finetune.teacher = {spec!r}: the model is a {type(model).__name__}, not a "
                              f"{task.head_class.__name__}")
    model.eval().requires_grad_(False).to(resolve_device(cfg.impl))
    return model, method.encoder(task, tokenizer, method.input_length(model.backbone)), labels


def read_unlabeled(path: str, task: Task, data_cfg, label_names: list[str]):
    """Unlabeled text as the task's examples, each with a placeholder label the student's encoding
    accepts (dropped by `without_labels`): one example per line (txt), or a text column."""
    texts = list(read_documents(path, TextDataConfig(train=[path], text_field=data_cfg.text_field,
                                                     on_bad_utf8=data_cfg.on_bad_utf8)))
    if not texts:
        raise PretrainerError(f"config key 'finetune.distill_unlabeled': {path} holds no text")
    if task.name == "tokens":  # words split on white space
        return [TaggedSentence(text.split(), [label_names[0]] * len(text.split()), f"{path}:{i + 1}")
                for i, text in enumerate(texts)]
    return LabeledExamples(texts=texts, pairs=None, labels=[label_names[0]] * len(texts), source=path,
                           line_numbers=list(range(1, len(texts) + 1)))


def without_labels(dataset):
    """An encoded dataset whose examples have no gold label (IGNORE_INDEX everywhere)."""
    if hasattr(dataset, "word_labels"):
        return dataclasses.replace(dataset, word_labels=[[IGNORE_INDEX] * len(w) for w in dataset.word_labels])
    return dataclasses.replace(dataset, labels=[IGNORE_INDEX] * len(dataset.labels))


def concatenate(a, b):
    """Two encoded datasets of one kind as one: per-example lists joined, the rest a's."""
    return dataclasses.replace(a, **{f.name: getattr(a, f.name) + getattr(b, f.name) for f in dataclasses.fields(a)
                                     if f.name != "label_names" and isinstance(getattr(a, f.name), list)})


def teacher_logits(teacher: nn.Module, dataset, cfg: Config) -> list[torch.Tensor]:
    """The teacher's logits for each example of its encoded `dataset`: (K,) per example, or per
    word (W, K) for tagging, NaN rows for words truncated away. Cached on disk by content."""
    tagging = hasattr(dataset, "label_word")
    path = cache_root(cfg.data.cache_dir or None) / "teacher_logits" / f"{_key(teacher, dataset)}.safetensors"
    if path.is_file():
        cached = load_file(str(path))
        return list(cached["logits"].split(cached["lengths"].tolist())) if tagging else list(cached["logits"])
    device = next(teacher.parameters()).device
    batch_size = max(cfg.finetune.train.batch_size, 64)
    out: list[torch.Tensor] = []
    with torch.no_grad():
        batches = iterate_tagging_once(dataset, batch_size) if tagging else iterate_once(dataset, batch_size)
        for batch in batches:
            logits = teacher({k: v.to(device) for k, v in batch.items()}).float().cpu()
            if not tagging:
                out.extend(logits)
                continue
            for row, words in zip(range(len(logits)), batch["word_labels"]):
                per_word = torch.full((int((words != IGNORE_INDEX).sum()), logits.shape[-1]), float("nan"))
                at = batch["label_word"][row]
                cols = (at >= 0).nonzero(as_tuple=True)[0]
                per_word[at[cols]] = logits[row, cols]
                out.append(per_word)
    if tagging:
        lengths = torch.tensor([len(t) for t in out])
        save_weights({"logits": torch.cat(out), "lengths": lengths}, path)
    else:
        save_weights({"logits": torch.stack(out)}, path)
    return out


def _key(teacher: nn.Module, dataset) -> str:
    """A content hash of the teacher's weights and its encoded inputs."""
    h = hashlib.sha256()
    h.update(type(teacher).__name__.encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(dataset.input_ids).encode())
    if hasattr(dataset, "label_word"):
        h.update(json.dumps(dataset.label_word).encode())
    return h.hexdigest()[:32]
