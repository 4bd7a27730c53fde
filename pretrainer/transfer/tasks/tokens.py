"""Token classification (NER): one tag per word in CoNLL files, a TokenClassifier (optionally
with word-shape features and a CRF), entity-level F1 chosen on dev."""

from __future__ import annotations

from torch import nn

from pretrainer.data.conll import (TaggedSentence, TaggingLoader, encode_sentences, infer_tag_names,
                                   iterate_tagging_once, read_conll, sentence_subset)
from pretrainer.data.readers import ReadStats
from pretrainer.errors import PretrainerError
from pretrainer.models.heads import TokenClassifier
from pretrainer.objectives.token_classification import TokenClassificationObjective
from pretrainer.registry import TASKS
from pretrainer.transfer.tasks.base import Encoder, Splits, Task


@TASKS.register("tokens")
class Tokens(Task):
    name = "tokens"
    head_class = TokenClassifier
    metric = "f1"
    unit = "tagged sentences"
    labels_noun = "tags"
    record = {"task": "tokens"}

    def check(self, ft) -> None:
        # A tag per word needs every word in one input: sentences are truncated at the end only.
        if ft.truncation != "head":
            raise PretrainerError(f"config key 'finetune.truncation' = {ft.truncation!r} applies to "
                                  f"finetune.task = \"classification\" only; a tagger keeps the head")
        if ft.chunk_pooling != "none":
            raise PretrainerError(f"config key 'finetune.chunk_pooling' = {ft.chunk_pooling!r} applies to "
                                  f"finetune.task = \"classification\" only (a tagger labels words, not documents)")
        if ft.data.format not in ("auto", "conll"):
            raise PretrainerError(f"config key 'finetune.data.format' = {ft.data.format!r}: finetune.task = "
                                  f"\"tokens\" reads CoNLL files (format = \"conll\")")

    def read(self, path: str, data_cfg, stats: ReadStats | None = None) -> list[TaggedSentence]:
        sentences = read_conll(path, data_cfg.token_prefix, data_cfg.on_bad_utf8,
                               on_control_chars=data_cfg.on_control_chars, stats=stats)
        if not sentences:
            raise PretrainerError(f"{path}: no tagged sentences (expected `word<TAB>tag` lines)")
        return sentences

    def infer_labels(self, examples: list[TaggedSentence]) -> list[str]:
        return infer_tag_names(examples)

    def encoder(self, tokenizer, max_len: int, ft=None) -> Encoder:
        return lambda sentences, names: encode_sentences(sentences, tokenizer, names, max_len)

    def subset(self, train, ft, seed: int) -> list[int]:
        return sentence_subset(len(train), ft.label_fraction, ft.n_labels, seed=seed)

    def size(self, dataset) -> int:
        return len(dataset)

    def present_labels(self, dataset, indices: list[int] | None = None) -> set[int]:
        rows = dataset.word_labels if indices is None else [dataset.word_labels[i] for i in indices]
        return {tag for row in rows for tag in row}

    def head(self, backbone: nn.Module, num_labels: int, ft, **kwargs) -> nn.Module:
        return TokenClassifier(backbone, num_labels, case_features=ft.case_features, crf=ft.crf,
                               crf_lr=ft.crf_lr, **kwargs)

    def prepare(self, model: nn.Module, splits: Splits, log) -> None:
        if model.crf is None:
            return
        names = splits.label_names
        observed = [splits.train.word_labels[i] for i in splits.subset]
        forbidden = model.crf.restrict_to_iob2(names, observed)
        log(f"CRF over {len(names)} tags: {forbidden} of {len(names) ** 2} transitions forbidden (IOB2)")

    def objective(self, label_names: list[str]) -> TokenClassificationObjective:
        return TokenClassificationObjective(label_names)

    def batches(self, splits: Splits, batch_size: int, seed: int) -> TaggingLoader:
        return TaggingLoader(splits.train, batch_size, seed=seed, indices=splits.subset)

    def evaluate(self, model: nn.Module, dataset, label_names: list[str], batch_size: int,
                 final: bool = False) -> dict:
        # The final report adds precision / recall / F1 per entity type.
        return self.objective(label_names).evaluate(model, iterate_tagging_once(dataset, batch_size), per_type=final)

    def describe(self, metrics: dict) -> str:
        return (f"entity F1 {metrics['f1']:.4f} (precision {metrics['precision']:.4f}, "
                f"recall {metrics['recall']:.4f}), word accuracy {metrics['accuracy']:.4f}")
