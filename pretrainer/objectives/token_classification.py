"""Token classification (NER), the fine-tuning objective for tagged sentences.

Built directly by `finetune_tokens`, `TokenClassificationObjective(label_names)`: like
sequence classification it needs the label set of the data, so it is not a registered
pre-training objective. Training scores every labeled sub-token (a word's first one);
evaluation scores words and entities, as CoNLL does.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.data.collators import IGNORE_INDEX
from pretrainer.objectives.mlm import evaluation_batches


class TokenClassificationObjective:
    batch_kind = "tokens"

    def __init__(self, label_names: Sequence[str]):
        self.label_names = list(label_names)

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        """model is a TokenClassifier; batch["labels"] (B, T) long, IGNORE_INDEX where unlabeled."""
        logits = model(batch)  # (B, T, num_labels)
        labels = batch["labels"]
        labeled = labels != IGNORE_INDEX
        # Summed then divided, so a batch without a labeled token gives 0, not NaN.
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum") / labeled.sum().clamp(min=1)
        correct = (logits.argmax(dim=-1) == labels) & labeled
        acc = correct.sum() / labeled.sum().clamp(min=1)
        return {"loss": loss, "acc": acc.detach(), "n_tokens": batch["input_ids"].numel()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict], per_type: bool = False) -> dict:
        """-> {"loss", "precision", "recall", "f1", "accuracy", "macro_f1"} (and "per_type" if asked).

        precision/recall/f1 are entity-level (exact span and type) over whole sentences: a word
        without a prediction (truncated away) counts as "O". accuracy is the fraction of words
        tagged right; loss is per labeled sub-token. "macro_f1" repeats the entity F1 so code
        written for classification results (the label-efficiency curve) reads NER results too.
        """
        from pretrainer.evaluation.entities import entity_scores

        gold, predicted = [], []
        loss_sum, n_labeled = 0.0, 0
        for batch in evaluation_batches(model, batches):
            logits = model(batch)  # (B, T, num_labels)
            labels = batch["labels"]
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                              ignore_index=IGNORE_INDEX, reduction="sum"))
            n_labeled += int((labels != IGNORE_INDEX).sum())
            g, p = self.word_tags(logits.argmax(dim=-1).cpu(), batch["label_word"].cpu(),
                                  batch["word_labels"].cpu())
            gold += g
            predicted += p
        if not gold:
            raise ValueError("evaluate() got no batches")
        scores = entity_scores(gold, predicted)
        n_words = sum(len(tags) for tags in gold)
        n_right = sum(g == p for tags, pred in zip(gold, predicted) for g, p in zip(tags, pred))
        result = {"loss": loss_sum / max(n_labeled, 1), "precision": scores["precision"],
                  "recall": scores["recall"], "f1": scores["f1"], "accuracy": n_right / n_words,
                  "macro_f1": scores["f1"]}
        if per_type:
            result["per_type"] = scores["per_type"]
        return result

    def word_tags(self, predictions: torch.Tensor, label_word: torch.Tensor,
                  word_labels: torch.Tensor) -> tuple[list[list[str]], list[list[str]]]:
        """Gold and predicted tag names per word, from token predictions (B, T) at first sub-tokens."""
        gold, predicted = [], []
        for pred_row, word_row, gold_row in zip(predictions.tolist(), label_word.tolist(), word_labels.tolist()):
            tags = [self.label_names[i] for i in gold_row if i != IGNORE_INDEX]
            guess = ["O"] * len(tags)
            for label_id, word in zip(pred_row, word_row):
                if word >= 0:
                    guess[word] = self.label_names[label_id]
            gold.append(tags)
            predicted.append(guess)
        return gold, predicted
