"""Supervised sequence classification, the fine-tuning objective.

Built directly, `ClassificationObjective(num_labels)`, by fine-tuning: the label count comes
from the labeled data, which neither ObjectiveConfig nor the tokenizer knows. It is also
registered as "classification" so it can be found by name, but it is not a pre-training
objective; calling it the registry way, with (cfg, tokenizer), is refused with a message.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.data.collators import IGNORE_INDEX
from pretrainer.errors import PretrainerError
from pretrainer.evaluation.metrics import accuracy, macro_f1
from pretrainer.objectives.mlm import evaluation_batches
from pretrainer.registry import OBJECTIVES


@OBJECTIVES.register("classification")
class ClassificationObjective:
    batch_layout = "classification"

    def __init__(self, num_labels: int, tokenizer=None):
        if isinstance(num_labels, bool) or not isinstance(num_labels, int):
            raise PretrainerError("objective 'classification' is used by `pretrainer finetune`, not for "
                                  "pre-training; choose objective.name = mlm, mlm_nsp or clm")
        self.num_labels = num_labels

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        """model is a SequenceClassifier; batch["labels"] (B,) long."""
        units = batch["input_ids"] if "input_ids" in batch else batch["labels"]  # tokens, or images
        return {**self.from_logits(model, model(batch), batch), "n_tokens": units.numel()}

    def from_logits(self, model: nn.Module, logits: torch.Tensor, batch: dict) -> dict:
        """{"loss", "acc"} of logits (B, num_labels) against batch["labels"]; a row labelled
        IGNORE_INDEX (unlabeled text a distillation teacher labels) counts in neither."""
        labels = batch["labels"]
        labeled = labels != IGNORE_INDEX
        if bool(labeled.all()):
            loss = F.cross_entropy(logits.float(), labels)
        else:  # summed then divided: a batch without a gold label gives 0, not NaN
            loss = F.cross_entropy(logits.float(), labels, reduction="sum") / labeled.sum().clamp(min=1)
        acc = ((logits.argmax(dim=-1) == labels) & labeled).sum() / labeled.sum().clamp(min=1)
        return {"loss": loss, "acc": acc.detach()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        """-> {"loss", "accuracy", "macro_f1"}; keeps only predicted ids, never logits."""
        preds, labels = [], []
        loss_sum = 0.0
        for batch in evaluation_batches(model, batches):
            logits = model(batch)
            loss_sum += float(F.cross_entropy(logits.float(), batch["labels"], reduction="sum"))
            preds.append(logits.argmax(dim=-1).cpu())
            labels.append(batch["labels"].cpu())
        if not labels:
            raise ValueError("evaluate() got no batches")
        preds, labels = torch.cat(preds), torch.cat(labels)
        return {"loss": loss_sum / len(labels), "accuracy": accuracy(preds, labels),
                "macro_f1": macro_f1(preds, labels, self.num_labels)}
