"""What a task is to the fine-tuning run: how its labeled files are read and encoded, the head
put on the backbone, the objective, the metric chosen on dev, and what results.json records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

from torch import nn

from pretrainer.config import FinetuneConfig
from pretrainer.data.readers import ReadStats
from pretrainer.errors import PretrainerError

# encode(examples, label_names) -> an encoded dataset (what the task's loaders batch)
Encoder = Callable[[object, list[str]], object]


@dataclass
class Splits:
    """A task's labeled files encoded for one model: train (and which of its examples' labels are
    used), dev and test."""

    label_names: list[str]
    train: object
    subset: list[int]
    dev: object | None
    test: object | None
    # What reading each file ("train", "dev", "test") skipped or stripped, by the input policies.
    read_stats: dict[str, ReadStats] = field(default_factory=dict)


class Task:
    """A kind of labeled task. A subclass registered in TASKS is all a new task needs; methods
    declare which tasks they support by name (`TransferMethod.tasks`)."""

    name: ClassVar[str]
    head_class: ClassVar[type[nn.Module]]  # what `head` builds, and what a saved run of the task loads as
    metric: ClassVar[str]  # chosen on dev (higher is better): early stopping and the best weights
    unit: ClassVar[str] = "labeled examples"  # what the training file holds, for the log
    labels_noun: ClassVar[str] = "labels"
    record: ClassVar[dict] = {}  # fields results.json starts with
    labeled: ClassVar[bool] = True  # False: targets are texts, not label names (generation)

    def check(self, ft: FinetuneConfig) -> None:
        """Refuse settings that do not apply to this task (one-line errors naming the key)."""

    def read(self, path: str, data_cfg, stats: ReadStats | None = None):
        """The examples of one labeled file; what the input policies skipped is counted in `stats`."""
        raise NotImplementedError

    def infer_labels(self, examples) -> list[str]:
        raise NotImplementedError

    def encoder(self, tokenizer, max_len: int, ft: FinetuneConfig | None = None) -> Encoder:
        """How examples become model inputs; `ft` brings the long-document keys (truncation,
        chunk_pooling, ...) for a task that reads them (None: the defaults)."""
        raise NotImplementedError

    def encoding_cost(self, dataset) -> dict | None:
        """Per-example cost of an encoded split for results.json (chunks, tokens), or None."""
        return None

    def subset(self, train, ft: FinetuneConfig, seed: int) -> list[int]:
        """The training examples whose labels are used (finetune.n_labels or label_fraction)."""
        raise NotImplementedError

    def size(self, dataset) -> int:
        raise NotImplementedError

    def present_labels(self, dataset, indices: list[int] | None = None) -> set[int]:
        """The label indices that occur in an encoded split (in `indices` of it, when given)."""
        raise NotImplementedError

    def read_evaluation_file(self, path: str, data_cfg, encode: Encoder, label_names: list[str],
                             stats: ReadStats | None = None):
        """A dev/test file read and encoded like the training file; an empty one is an error
        naming it (before any training, not when it is scored)."""
        return self.require_examples(encode(self.read(path, data_cfg, stats), label_names), path)

    def require_examples(self, dataset, path: str):
        if not self.size(dataset):
            raise PretrainerError(f"{path}: no {self.unit} in this file")
        return dataset

    def read_splits(self, ft: FinetuneConfig, encode: Encoder, seed: int, uses_labels: bool = True) -> Splits:
        """finetune.data's train/dev/test files; the label names are finetune.data.labels or the
        training file's. Without `uses_labels` (zero-shot) no training label is used.

        A training file with fewer than two examples or two classes, a label subset
        (finetune.label_fraction / n_labels) of one class, and an empty dev or test file are
        errors naming the file: a classifier of one class learns nothing, and a score on no
        examples is no score."""
        stats = {name: ReadStats() for name, path in (("train", ft.data.train), ("dev", ft.data.dev),
                                                       ("test", ft.data.test)) if path}
        train_examples = self.read(ft.data.train, ft.data, stats["train"])
        label_names = ft.data.labels or self.infer_labels(train_examples)
        if label_names or ft.data.labels:  # (none found: the file is empty, said just below)
            self.check_label_set(ft, label_names)
        train = self.require_examples(encode(train_examples, label_names), ft.data.train)
        if uses_labels and self.size(train) < 2:
            raise PretrainerError(f"{ft.data.train}: only {self.size(train)} of the {self.unit}; fine-tuning "
                                  f"needs at least 2")
        subset = self.subset(train, ft, seed) if uses_labels else []
        if uses_labels:
            self.check_subset(ft, train, subset, label_names)

        def split(name: str, path: str):
            return self.read_evaluation_file(path, ft.data, encode, label_names, stats[name]) if path else None

        return Splits(label_names=label_names, train=train, subset=subset, dev=split("dev", ft.data.dev),
                      test=split("test", ft.data.test), read_stats=stats)

    def check_label_set(self, ft: FinetuneConfig, label_names: list[str]) -> None:
        """At least two labels to choose from."""
        if len(label_names) < 2:
            where = "config key 'finetune.data.labels'" if ft.data.labels else ft.data.train
            only = f"the only {self.labels_noun[:-1]} is {label_names[0]!r}" if label_names else f"no {self.labels_noun}"
            raise PretrainerError(f"{where}: {only}; fine-tuning needs at least 2 {self.labels_noun}")

    def check_subset(self, ft: FinetuneConfig, train, subset: list[int], label_names: list[str]) -> None:
        """The examples whose labels are used must hold at least two of the labels."""
        present = self.present_labels(train, subset)
        if len(present) < 2:
            key = (f"finetune.n_labels = {ft.n_labels}" if ft.n_labels
                   else f"finetune.label_fraction = {ft.label_fraction}")
            found = ", ".join(repr(label_names[i]) for i in sorted(present)) or "none"
            raise PretrainerError(f"{ft.data.train}: the {len(subset)} {self.unit} that config key {key} "
                                  f"keeps hold only the {self.labels_noun} {found}; fine-tuning needs at least 2 "
                                  f"(use more labels or a larger fraction)")

    def head(self, backbone: nn.Module, num_labels: int, ft: FinetuneConfig, **kwargs) -> nn.Module:
        """A fresh `head_class` on `backbone`; `kwargs` are the method's (dropout, layer_decay)."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, splits: Splits, log) -> None:
        """Set up the head with what the training data says, before fitting (nothing by default)."""

    def objective(self, label_names: list[str]):
        raise NotImplementedError

    def batches(self, splits: Splits, batch_size: int, seed: int):
        """The training loader over `splits.subset`."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, dataset, label_names: list[str], batch_size: int,
                 final: bool = False) -> dict:
        """Metrics of `model` on an encoded split; `final`: the fuller report results.json keeps."""
        raise NotImplementedError

    def write_outputs(self, metrics: dict, run_dir, name: str) -> dict:
        """`metrics` as results.json keeps them; a task whose scoring made outputs worth reading
        (generated texts) writes them to a file in `run_dir` named after `name` instead."""
        return metrics

    def describe(self, metrics: dict) -> str:
        """One log line of metrics."""
        raise NotImplementedError
