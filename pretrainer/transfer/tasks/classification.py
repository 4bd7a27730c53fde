"""Sequence classification: one label per example (jsonl, csv or tsv files), a
SequenceClassifier on the pooled sentence vector, accuracy chosen on dev."""

from __future__ import annotations

from torch import nn

from pretrainer.data.labeled import (ClassificationLoader, encode_examples, infer_label_names, iterate_once,
                                     stratified_subset)
from pretrainer.data.long_documents import LongDocuments, encode_long_examples, encoding_cost
from pretrainer.data.readers import LabeledExamples, ReadStats, read_labeled
from pretrainer.errors import PretrainerError
from pretrainer.models.heads import SequenceClassifier
from pretrainer.objectives.classification import ClassificationObjective
from pretrainer.registry import TASKS
from pretrainer.transfer.tasks.base import Encoder, Splits, Task


@TASKS.register("classification")
class Classification(Task):
    name = "classification"
    head_class = SequenceClassifier
    metric = "accuracy"

    def check(self, ft) -> None:
        for key in ("case_features", "crf"):
            if getattr(ft, key):
                raise PretrainerError(f"config key 'finetune.{key}' applies to finetune.task = \"tokens\" only")

    def read(self, path: str, data_cfg, stats: ReadStats | None = None) -> LabeledExamples:
        return read_labeled(path, data_cfg, stats)

    def infer_labels(self, examples: LabeledExamples) -> list[str]:
        return infer_label_names(examples)

    def encoder(self, tokenizer, max_len: int, ft=None) -> Encoder:
        if getattr(tokenizer, "kind", "") == "image":
            raise PretrainerError("config key 'finetune.task' = \"classification\" reads text, but the backbone reads "
                                  "images; set finetune.task = \"image_classification\"")
        long = LongDocuments.of(ft) if ft is not None else LongDocuments()
        long.check(max_len)  # before any file is read

        def encode(examples: LabeledExamples, names: list[str]):
            # max_chunks is left out: it means nothing without chunking.
            if examples.pairs is not None and long.truncation == "head" and not long.chunked:
                return encode_examples(examples, tokenizer, names, max_len)  # longest-first over the pair
            return encode_long_examples(examples, tokenizer, names, max_len, long)

        return encode

    def read_evaluation_file(self, path: str, data_cfg, encode: Encoder, label_names: list[str],
                             stats: ReadStats | None = None):
        examples = evaluation_sample(self.read(path, data_cfg, stats), data_cfg.max_eval_examples)
        return self.require_examples(encode(examples, label_names), path)

    def subset(self, train, ft, seed: int) -> list[int]:
        labels = train.labels
        if ft.n_labels:
            if ft.n_labels > len(labels):
                raise PretrainerError(f"config key 'finetune.n_labels' = {ft.n_labels}, but "
                                      f"{ft.data.train} has only {len(labels)} examples")
            return stratified_subset(labels, ft.n_labels / len(labels), seed=seed)
        return stratified_subset(labels, ft.label_fraction, seed=seed)

    def size(self, dataset) -> int:
        return len(dataset.labels)

    def present_labels(self, dataset, indices: list[int] | None = None) -> set[int]:
        labels = dataset.labels
        return {labels[i] for i in indices} if indices is not None else set(labels)

    def head(self, backbone: nn.Module, num_labels: int, ft, **kwargs) -> nn.Module:
        return SequenceClassifier(backbone, num_labels, pooling=ft.pooling, **chunk_pooling(ft), **kwargs)

    def objective(self, label_names: list[str]) -> ClassificationObjective:
        return ClassificationObjective(len(label_names))

    def batches(self, splits: Splits, batch_size: int, seed: int) -> ClassificationLoader:
        return ClassificationLoader(splits.train, batch_size, seed=seed, indices=splits.subset)

    def evaluate(self, model: nn.Module, dataset, label_names: list[str], batch_size: int,
                 final: bool = False) -> dict:
        return self.objective(label_names).evaluate(model, iterate_once(dataset, batch_size))

    def encoding_cost(self, dataset) -> dict:
        return encoding_cost(dataset)

    def describe(self, metrics: dict) -> str:
        return f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"


def chunk_pooling(ft) -> dict:
    """The classifier's `chunk_pooling` argument: how it pools a chunked document's vectors."""
    return {"chunk_pooling": ft.chunk_pooling if ft.chunk_pooling != "none" else "mean"}


def evaluation_sample(examples: LabeledExamples, max_examples: int) -> LabeledExamples:
    """At most `max_examples` of a dev/test file, stratified, drawn with a fixed seed so that
    every run and seed is scored on the same examples."""
    if not max_examples or len(examples) <= max_examples:
        return examples
    return examples.select(stratified_subset(examples.labels, max_examples / len(examples), seed=0))
