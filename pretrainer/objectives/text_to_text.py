"""Text-to-text fine-tuning's objective: cross-entropy of the decoder's next-token logits
against the target, teacher forced (the decoder reads the gold prefix).

Built directly by the generation task, `TextToTextObjective()`; the model is an encoder–decoder
backbone (`decoder_projection` onto the vocabulary), the batch a `TextPairDataset`'s.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from pretrainer.data.collators import IGNORE_INDEX
from pretrainer.objectives.linear_ce import linear_cross_entropy
from pretrainer.objectives.mlm import evaluation_batches, perplexity


class TextToTextObjective:
    batch_layout = "text_pairs"

    def terms(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        """-> (mean loss over target tokens, n correct next tokens, n target tokens)."""
        backbone = getattr(model, "backbone", model)
        hidden = backbone(batch["input_ids"], batch["attention_mask"],
                          decoder_input_ids=batch["decoder_input_ids"])  # (B, T, C)
        labels = batch["labels"].flatten()
        real = labels != IGNORE_INDEX
        features, weight, bias = backbone.decoder_projection(hidden)
        loss, hits = linear_cross_entropy(features.flatten(0, 1)[real], weight, labels[real], bias)
        return loss, hits.sum(), int(real.sum())

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        loss, correct, n = self.terms(model, batch)
        return {"loss": loss, "token_acc": (correct.float() / max(n, 1)).detach(),
                "n_tokens": batch["input_ids"].numel() + n}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        """-> {"target_loss", "target_ppl", "token_acc"} over every target token, teacher forced."""
        loss_sum = correct = 0.0
        count = 0
        for batch in evaluation_batches(model, batches):
            loss, n_correct, n = self.terms(model, batch)
            loss_sum += float(loss) * n
            correct += float(n_correct)
            count += n
        loss = loss_sum / max(count, 1)
        return {"target_loss": loss, "target_ppl": perplexity(loss), "token_acc": correct / max(count, 1)}
