"""What a task is to the fine-tuning run: how its labeled files are read and encoded, the head
put on the backbone, the objective, the metric chosen on dev, and what results.json records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

from torch import nn

from pretrainer.config import FinetuneConfig

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


class Task:
    """A kind of labeled task. A subclass registered in TASKS is all a new task needs; methods
    declare which tasks they support by name (`TransferMethod.tasks`)."""

    name: ClassVar[str]
    head_class: ClassVar[type[nn.Module]]  # what `head` builds, and what a saved run of the task loads as
    metric: ClassVar[str]  # chosen on dev (higher is better): early stopping and the best weights
    unit: ClassVar[str] = "labeled examples"  # what the training file holds, for the log
    labels_noun: ClassVar[str] = "labels"
    record: ClassVar[dict] = {}  # fields results.json starts with

    def check(self, ft: FinetuneConfig) -> None:
        """Refuse settings that do not apply to this task (one-line errors naming the key)."""

    def read(self, path: str, data_cfg):
        """The examples of one labeled file."""
        raise NotImplementedError

    def infer_labels(self, examples) -> list[str]:
        raise NotImplementedError

    def encoder(self, tokenizer, max_len: int) -> Encoder:
        raise NotImplementedError

    def subset(self, train, ft: FinetuneConfig, seed: int) -> list[int]:
        """The training examples whose labels are used (finetune.n_labels or label_fraction)."""
        raise NotImplementedError

    def size(self, dataset) -> int:
        raise NotImplementedError

    def read_evaluation_file(self, path: str, data_cfg, encode: Encoder, label_names: list[str]):
        """A dev/test file read and encoded like the training file."""
        return encode(self.read(path, data_cfg), label_names)

    def read_splits(self, ft: FinetuneConfig, encode: Encoder, seed: int, uses_labels: bool = True) -> Splits:
        """finetune.data's train/dev/test files; the label names are finetune.data.labels or the
        training file's. Without `uses_labels` (zero-shot) no training label is used."""
        train_examples = self.read(ft.data.train, ft.data)
        label_names = ft.data.labels or self.infer_labels(train_examples)
        train = encode(train_examples, label_names)

        def split(path: str):
            return self.read_evaluation_file(path, ft.data, encode, label_names) if path else None

        return Splits(label_names=label_names, train=train,
                      subset=self.subset(train, ft, seed) if uses_labels else [],
                      dev=split(ft.data.dev), test=split(ft.data.test))

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

    def describe(self, metrics: dict) -> str:
        """One log line of metrics."""
        raise NotImplementedError
