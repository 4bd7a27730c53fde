"""Token classification (NER), the fine-tuning objective for tagged sentences.

Built directly by `finetune_tokens`, `TokenClassificationObjective(label_names)`: like
sequence classification it needs the label set of the data, so it is not a registered
pre-training objective. Training scores every labeled sub-token (a word's first one);
evaluation scores words and entities, as CoNLL does. A tagger with a CRF (`model.crf`) trains
on the log-likelihood of each sentence's whole tag sequence and predicts by Viterbi decoding.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.data.collators import IGNORE_INDEX
from pretrainer.evaluation.entities import entity_scores
from pretrainer.objectives.mlm import evaluation_batches


class TokenClassificationObjective:
    batch_layout = "tokens"

    def __init__(self, label_names: Sequence[str]):
        self.label_names = list(label_names)

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        """model is a TokenClassifier; batch["labels"] (B, T) long, IGNORE_INDEX where unlabeled."""
        return {**self.from_logits(model, model(batch), batch), "n_tokens": batch["input_ids"].numel()}

    def from_logits(self, model: nn.Module, logits: torch.Tensor, batch: dict) -> dict:
        """{"loss", "acc"} of logits (B, T, num_labels) against batch["labels"]."""
        labels = batch["labels"]
        labeled = labels != IGNORE_INDEX
        # Summed then divided, so a batch without a labeled token gives 0, not NaN.
        loss_sum, predicted = _loss_and_predictions(model, logits, labels)
        loss = loss_sum / labeled.sum().clamp(min=1)
        correct = (predicted == labels) & labeled
        acc = correct.sum() / labeled.sum().clamp(min=1)
        return {"loss": loss, "acc": acc.detach()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict], per_type: bool = False) -> dict:
        """-> {"loss", "precision", "recall", "f1", "accuracy", "macro_f1"} (and "per_type" if asked).

        precision/recall/f1 are entity-level (exact span and type) over whole sentences: a word
        without a prediction (truncated away) counts as "O". accuracy is the fraction of words
        tagged right; loss is per labeled sub-token (with a CRF: the sentences' negative
        log-likelihood divided by their number of labeled words). "macro_f1" repeats the entity F1 so code
        written for classification results (the label-efficiency curve) reads NER results too.
        """
        gold, predicted = [], []
        loss_sum, n_labeled = 0.0, 0
        for batch in evaluation_batches(model, batches):
            logits = model(batch)  # (B, T, num_labels)
            labels = batch["labels"]
            batch_loss, batch_predicted = _loss_and_predictions(model, logits, labels)
            loss_sum += float(batch_loss)
            n_labeled += int((labels != IGNORE_INDEX).sum())
            g, p = self.word_tags(batch_predicted.cpu(), batch["label_word"].cpu(), batch["word_labels"].cpu())
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


# ---------------------------------------------------------------- softmax or CRF


@torch.no_grad()
def decode_tags(model: nn.Module, logits: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    """Predicted tag ids (B, T) at the `labeled` positions (B, T) bool, a word's first sub-token:
    the argmax per token, or the Viterbi path when `model` has a CRF (`pretrainer predict`)."""
    labels = torch.where(labeled, 0, IGNORE_INDEX)
    return _loss_and_predictions(model, logits, labels)[1]


def _loss_and_predictions(model: nn.Module, logits: torch.Tensor,
                          labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss summed over the batch and the predicted tag ids (B, T).

    Without a CRF: the cross-entropy of every labeled sub-token, and the argmax per token.
    With one: the negative log-likelihood of every sentence's tag sequence, and the Viterbi
    path over the labeled sub-tokens (0 elsewhere; only labeled positions are read). Both
    read the same packing of the labeled sub-tokens, made once.
    """
    crf = getattr(model, "crf", None)
    if crf is None:
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        return loss, logits.argmax(dim=-1)
    words, tags, mask, (rows, cols, slots) = _labeled_words(logits, labels)
    loss = -crf.log_likelihood(words, tags, mask).sum()
    with torch.no_grad():  # decoding is a prediction, not part of the loss's graph
        path = crf.decode(words, mask)  # (B, W)
    predicted = torch.zeros_like(labels)
    predicted[rows, cols] = path[rows, slots]
    return loss, predicted


def _labeled_words(logits: torch.Tensor, labels: torch.Tensor):
    """The labeled sub-tokens (one per word) packed to the left of each row, as the CRF wants:
    scores (B, W, K), tags (B, W), mask (B, W), and where each came from (row, column, slot)."""
    labeled = labels != IGNORE_INDEX  # (B, T)
    slot_of = labeled.long().cumsum(dim=1) - 1  # k-th labeled position of its row -> slot k
    rows, cols = labeled.nonzero(as_tuple=True)
    slots = slot_of[rows, cols]
    width = max(int(labeled.sum(dim=1).max()), 1)
    words = logits.new_zeros(logits.shape[0], width, logits.shape[-1])
    words[rows, slots] = logits[rows, cols]
    tags = labels.new_zeros(labels.shape[0], width)
    tags[rows, slots] = labels[rows, cols]
    mask = torch.zeros_like(tags, dtype=torch.bool)
    mask[rows, slots] = True
    return words, tags, mask, (rows, cols, slots)
